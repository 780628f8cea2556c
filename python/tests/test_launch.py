"""The examples as a user runs them: `ringrun launch --np 3 -- python EXAMPLE`, one worker
SIGKILLed mid-run. The survivors go on, the launcher restarts the killed worker, it rejoins, and
every worker ends with the fault-free weights."""

import glob
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT

EXAMPLES = os.path.join(ROOT, "python", "examples")


def ringrun_binary():
    if os.environ.get("RINGRUN_BIN"):
        return os.environ["RINGRUN_BIN"]
    found = glob.glob(os.path.join(ROOT, "target", "*", "ringrun"))
    return max(found, key=os.path.getmtime) if found else None


def worker_pid(launcher, node):
    """The pid of the launcher's child with RINGRUN_NODE_ID=node, from /proc."""
    want = f"RINGRUN_NODE_ID={node}".encode()
    with open(f"/proc/{launcher}/task/{launcher}/children") as f:
        for pid in f.read().split():
            try:
                with open(f"/proc/{pid}/environ", "rb") as e:
                    if want in e.read().split(b"\0"):
                        return int(pid)
            except OSError:
                continue
    return None


def final(lines):
    last = [line for line in lines if line.startswith("final ")][-1]
    return np.array([float(v) for v in last.split()[1:]])


def launch_and_kill(script_args, kill_after=None, deadline_s=120, np_=3, launch_args=()):
    """``ringrun launch --np np_ ... -- python SCRIPT``; once worker 1 printed a line starting
    with ``kill_after`` (unless None), SIGKILLs it. Returns each launch rank's output lines."""
    exe = ringrun_binary()
    assert exe is not None, "the ringrun binary is not built (cargo build -p ringrun-launcher)"
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [exe, "launch", "--np", str(np_), "--max-restarts", "2", *launch_args, "--",
         sys.executable, *script_args],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    lines = []

    def read():
        for line in proc.stdout:
            print(line, end="", file=sys.stderr)
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + deadline_s
    try:
        while kill_after is not None and not any(
            line.startswith(f"[1] {kill_after}") for line in list(lines)
        ):
            assert proc.poll() is None, "the job ended before the kill"
            assert time.monotonic() < deadline, f"worker 1 never printed {kill_after!r}"
            time.sleep(0.01)
        if kill_after is not None:
            os.kill(worker_pid(proc.pid, 1), 9)
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=5)
    assert proc.returncode == 0, f"ringrun launch exited with {proc.returncode}"
    return {r: [l[len(f"[{r}] "):] for l in lines if l.startswith(f"[{r}] ")] for r in range(np_)}


def test_numpy_example_under_launch_survives_a_sigkill():
    train = os.path.join(EXAMPLES, "numpy_train.py")
    steps = 150
    ref = subprocess.run(
        [sys.executable, train, "--reference", "--steps", str(steps)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()
    by_rank = launch_and_kill([train, "--steps", str(steps), "--step-ms", "15"], "step 40 ")
    for rank, lines in by_rank.items():
        np.testing.assert_allclose(final(lines), final(ref), rtol=1e-9, err_msg=f"rank {rank}")
    assert any(" size 2 " in l for l in by_rank[0] if l.startswith("step ")), by_rank[0]


def test_torch_example_under_launch_survives_a_sigkill():
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("torch is not installed")
    train = os.path.join(EXAMPLES, "torch_train.py")
    by_rank = launch_and_kill([train, "--steps", "120", "--step-ms", "15"], "step 30 ")
    finals = [[l for l in lines if l.startswith("final ")][-1:] for lines in by_rank.values()]
    assert finals[0] and finals[0] == finals[2], finals
    # The killed worker's restart imports torch for seconds: it comes back with the others
    # (then it ends with their model) or after they finished the job (then it learns that the
    # job completed and exits with status 0, training nothing; the launch succeeded above).
    assert finals[1] in ([], finals[0]), finals
    assert any(" size 2 " in l for l in by_rank[0] if l.startswith("step ")), by_rank[0]
