"""The torch.distributed backend "ringrun": every collective x dtype x op against Gloo's result
for the same inputs (world sizes 1-4), Work and Future behaviour, and bad input.

torch is required: CI installs it, and without it these tests fail rather than skip unless
RINGRUN_TORCH_OPTIONAL=1 is set."""

import os
import sys

import pytest

from conftest import HERE, free_udp_port

try:
    import torch  # noqa: F401
except ImportError:
    if os.environ.get("RINGRUN_TORCH_OPTIONAL") != "1":
        raise
    pytest.skip("torch is not installed (RINGRUN_TORCH_OPTIONAL=1)", allow_module_level=True)

WORKER = os.path.join(HERE, "torch_worker.py")


def torch_env(n):
    master, gloo = free_udp_port(), free_udp_port()

    def env(node):
        return dict(RANK=str(node), WORLD_SIZE=str(n), LOCAL_RANK=str(node),
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master), GLOO_PORT=str(gloo))

    return env


def run(group, scenario, n, within=240):
    g = group([WORKER, scenario], n, f"torch-{scenario}", torch_env(n))
    outs = g.finish(within=within)
    for node, lines in enumerate(outs):
        assert any(line.startswith("checked ") for line in lines), f"node {node}: {lines[-5:]}"
    return outs


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_every_collective_dtype_and_op_matches_gloo(group, n):
    outs = run(group, "grid", n)
    counts = {line.split()[1] for lines in outs for line in lines if line.startswith("checked ")}
    # Per rank: 8 dtypes x (5 ops x 3 reductions + n broadcast roots + n scatter roots + 2
    # all_gathers + 2 all_to_alls) + n gathers rooted here, the strided view, n reduce roots.
    assert counts == {str(8 * (15 + 2 * n + 4) + 8 + 1 + n)}, counts


@pytest.mark.parametrize("n", [1, 3])
def test_async_work_and_futures(group, n):
    outs = run(group, "async", n)
    if n > 1:
        assert any("python thread ran" in line for line in outs[0]), outs[0]


@pytest.mark.parametrize("n", [2, 3])
def test_unmodified_ddp_trains_as_on_gloo(group, n):
    run(group, "ddp", n)


def test_bad_input_raises_on_every_rank_and_the_group_recovers(group):
    outs = run(group, "bad", 3)
    for node, lines in enumerate(outs):
        text = "\n".join(lines)
        assert ("new_group: NotImplementedError" in text) == (node < 2), text
        assert ("scatter list: InvalidArgument" in text) == (node == 0), text
        for what in ("send: NotImplementedError", "all_to_all_single: NotImplementedError",
                     "all_to_all_single splits: InvalidArgument",
                     "bool dtype:", "BAND:", "shape:", "dtype:"):
            assert what in text, (what, text)


DDP_TRAIN = os.path.join(os.path.dirname(HERE), "examples", "ddp_train.py")


def launch_ddp(steps, kill_at=None, np_=4, min_np=4, deadline_s=240):
    """``ringrun launch --np 4 --min-np 4`` of the DDP example; with ``kill_at``, worker 1 is
    SIGKILLed once it printed that step. Returns each launch rank's lines."""
    from test_launch import launch_and_kill

    return launch_and_kill(
        [DDP_TRAIN, "--steps", str(steps), "--step-ms", "20"],
        None if kill_at is None else f"step {kill_at} ",
        deadline_s, np_=np_, launch_args=("--min-np", str(min_np)),
    )


def finals(by_rank):
    return {r: [l for l in lines if l.startswith("final ")][-1] for r, lines in by_rank.items()}


def test_ddp_example_under_launch_survives_a_sigkill_bit_for_bit():
    import json

    clean = finals(launch_ddp(40))
    assert len(set(clean.values())) == 1, clean
    by_rank = launch_ddp(40, kill_at=15)
    got = finals(by_rank)
    assert set(got.values()) == set(clean.values()), (got, clean)
    report = [json.loads(l[len("faults "):]) for lines in by_rank.values() for l in lines
              if l.startswith("faults ")]
    assert len(report) == 1 and len(report[0]) >= 1, report
    fault = report[0][0]
    assert fault["size_before"] == 4 and fault["size_after"] == 4, fault
    assert fault["steps_rolled_back"] >= 0 and fault["resume_ms"] > 0, fault


def test_ddp_example_shrinks_and_grows_back_without_rewrapping():
    """--min-np 3: the survivors train on as 3 (rank and size from the new epoch, gradients
    averaged over 3) until the restarted worker rejoins; every replica ends equal."""
    by_rank = launch_ddp(400, kill_at=10, min_np=3)  # long enough for the restart to rejoin
    got = finals(by_rank)
    assert len(set(got.values())) == 1, got
    sizes = {int(l.split()[3]) for lines in by_rank.values() for l in lines if l.startswith("step ")}
    assert sizes == {3, 4}, sizes
