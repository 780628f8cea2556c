"""ringrun.data: bad arguments, ranks that disagree, torch loaders, input files, and the churn
test: 4 workers under `ringrun launch`, SIGKILLed at random over 300 steps, whose ledger shows
every index exactly once per data epoch and whose weights equal a one-worker run's bit for bit."""

import json
import os
import random
import subprocess
import sys
import time

import pytest

import ringrun
from conftest import ROOT
from launched import Job
from ringrun.data import ElasticSampler, record_ranges
from test_launch import ringrun_binary

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "data_worker.py")
TRAIN = os.path.join(ROOT, "python", "examples", "data_train.py")


@pytest.mark.parametrize(
    "args, words",
    [
        ((10, 0), "global_batch must be positive"),
        ((10, 11), "larger than num_samples"),
        ((0, 1), "num_samples"),
        ((10, -1), "global_batch must be in"),
        ((10.5, 2), "num_samples must be an integer"),
    ],
)
def test_bad_arguments_name_the_cause(args, words):
    with pytest.raises(ringrun.InvalidArgument, match=words):
        ElasticSampler(*args)


def test_a_sampler_outside_a_group_is_not_initialised():
    s = ElasticSampler(100, 10)
    assert s.offset == 0 and s.data_epoch == 0 and len(s) == 10
    with pytest.raises(ringrun.NotInitialized):
        s.next_indices()
    s.load_state_dict({**s.state_dict(), "offset": 250})
    assert (s.offset, s.data_epoch, len(s)) == (250, 2, 5)
    with pytest.raises(ringrun.InvalidArgument, match="seed"):
        s.load_state_dict({**s.state_dict(), "seed": 1})


def test_record_ranges_cut_files_into_units():
    assert record_ranges([("a", 5), ("b", 2)], 2) == [
        ("a", 0, 2), ("a", 2, 4), ("a", 4, 5), ("b", 0, 2)]


def test_ranks_with_different_samplers_fail_on_every_rank(group):
    outs = group([WORKER, "mismatch"], 3, "data-mismatch").finish(within=60)
    for lines in outs:
        refused = [l for l in lines if l.startswith("refused ")]
        assert refused and "differ across ranks" in refused[0], lines


def test_torch_loaders_give_each_rank_its_share(group):
    pytest.importorskip("torch", reason="torch is not installed")
    outs = group([WORKER, "loaders"], 2, "data-loaders").finish(within=90)
    for lines in outs:
        assert "loader plain steps 7" in lines and "loader prefetch steps 7" in lines, lines


def run_launch(args, env=None, within=240, on_start=None):
    job = Job(args, env=env)
    if on_start is not None:
        on_start(job.proc, job.out)
    return job.finish(within)


def test_file_sampler_reads_every_input_file_once(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(8):
        (data / f"part-{i}").write_bytes(b"x" * (10 + i))
    lines = run_launch(["--np", "2", "--input", str(data), "--", sys.executable, WORKER,
                        "files"], within=60)
    read = [u for l in lines if "] units " in l for u in json.loads(l.split("] units ", 1)[1])]
    assert sorted(read) == sorted(str(p) for p in data.iterdir())


def data_check(ledger):
    out = subprocess.run([ringrun_binary(), "data-check", "--json", str(ledger)],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout)


def final_of(lines, rank):
    got = [l.split()[2] for l in lines if l.startswith(f"[{rank}] final ")]
    assert got, f"rank {rank} printed no final line"
    return got[-1]


def test_churn_under_launch_reads_every_index_once_and_matches_one_worker(tmp_path):
    steps = ["--steps", "300", "--samples", "1000", "--batch", "48"]
    ref = run_launch(["--np", "1", "--", sys.executable, TRAIN, *steps],
                     {"RINGRUN_DATA_LEDGER": str(tmp_path / "ref")}, within=120)
    assert data_check(tmp_path / "ref")[0] == 0
    pids = tmp_path / "pids"
    pids.mkdir()
    rng = random.Random(int(os.environ.get("RINGRUN_CHURN_SEED", "21")))
    kills = []

    def churn(proc, lines):
        # Four SIGKILLs at random moments of the run, each of a random live worker.
        deadline = time.monotonic() + 200
        while len(kills) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.4, 1.2))
            done = sum(1 for l in list(lines) if " step " in l and "] step " in l)
            if done > 4 * 200:  # the last restart (1.6 s back-off) must rejoin before the end
                break
            live = [p for p in os.listdir(pids) if os.path.exists(f"/proc/{p}")]
            if live:
                victim = int(rng.choice(sorted(live)))
                os.kill(victim, 9)
                os.remove(pids / str(victim))
                kills.append(victim)

    lines = run_launch(
        ["--np", "4", "--max-restarts", "10", "--", sys.executable, TRAIN, *steps,
         "--step-ms", "20", "--pid-dir", str(pids)],
        {"RINGRUN_DATA_LEDGER": str(tmp_path / "ledger")}, within=300, on_start=churn)
    assert len(kills) >= 3, f"only {len(kills)} workers were killed"
    rc, report = data_check(tmp_path / "ledger")
    (stream,) = report["samplers"]
    print(json.dumps(stream, indent=1), file=sys.stderr)
    assert rc == 0 and stream["ok"], stream
    assert stream["batches"] == 300 and stream["superseded"] > 0, stream
    passes = stream["data_epochs"]
    assert [p["once"] for p in passes] == [1000] * 14 + [400], passes
    want = final_of(ref, 0)
    for rank in range(4):
        assert final_of(lines, rank) == want, f"rank {rank}'s weights differ"
    sizes = {l.split(" size ")[1].split()[0] for l in lines if "] step " in l}
    assert len(sizes) > 1, f"the world never changed size: {sizes}"
