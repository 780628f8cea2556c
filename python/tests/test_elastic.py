"""examples/numpy_train.py under ringrun.elastic.run: 3 workers, one SIGKILLed mid-run; the
survivors restore the last commit, continue with 2 and end with the reference weights."""

import os
import subprocess
import sys

import numpy as np

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
TRAIN = os.path.join(EXAMPLES, "numpy_train.py")


def final(lines):
    last = [line for line in lines if line.startswith("final ")][-1]
    return np.array([float(v) for v in last.split()[1:]])


def test_elastic_run_survives_a_sigkill(group):
    steps = 150
    ref = subprocess.run(
        [sys.executable, TRAIN, "--reference", "--steps", str(steps)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()
    g = group([TRAIN, "--steps", str(steps), "--step-ms", "15"], 3, "elastic")
    g.wait_line(1, "step 30 ")
    g.kill(1)
    outs = g.finish(within=90)
    assert len(outs) == 2
    for lines in outs:
        np.testing.assert_allclose(final(lines), final(ref), rtol=1e-9)
        assert any(" size 2 " in line for line in lines if line.startswith("step ")), lines
        assert "faults 1" in lines or "faults 2" in lines, lines
        assert f"completed at commit {steps - 1}" in lines, lines


def test_torch_example(group):
    try:
        import torch  # noqa: F401
    except ImportError:
        import pytest

        pytest.skip("torch is not installed")
    g = group([os.path.join(EXAMPLES, "torch_train.py"), "--steps", "30"], 2, "torch")
    finals = [[line for line in lines if line.startswith("final ")] for lines in g.finish(90)]
    assert finals[0] and finals[0] == finals[1]
