"""Every dtype and op against numpy references, plus the other collectives, on 2 and 3
worker processes; and mismatched sizes raising on every rank instead of hanging."""

import os

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


@pytest.mark.parametrize("n", [2, 3])
def test_every_dtype_and_op(group, n):
    g = group([WORKER, "all", str(n)], n, "dtypes")
    for lines in g.finish(within=90):
        assert "ok" in lines


def test_mismatched_sizes_raise_on_every_rank(group):
    g = group([WORKER, "mismatch", "2"], 2, "mismatch", {"RINGRUN_OP_TIMEOUT_MS": "10000"})
    for lines in g.finish(within=40):
        assert any(line.startswith("mismatch raised") for line in lines), lines
        assert "ok" in lines


def test_cuda_tensors(group):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    g = group([WORKER, "cuda", "2"], 2, "cuda")
    for lines in g.finish(within=90):
        assert "ok" in lines
