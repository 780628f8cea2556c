"""A test worker: joins from the RINGRUN_* environment and runs one scenario, checking every
result against a numpy reference computed locally (inputs are a function of the rank)."""

import array
import sys

import numpy as np

import ringrun

FLOATS = ["float32", "float64", "float16"]
INTS = ["int8", "uint8", "int32", "int64"]
OPS = ["sum", "prod", "min", "max", "avg"]


def inputs(dtype, op, rank, count):
    """Small integers (exact in every dtype; products cannot overflow for 3 ranks)."""
    rng = np.random.default_rng([rank, len(dtype), OPS.index(op)])
    if op == "prod":
        vals = rng.choice([1, 2] if dtype == "uint8" else [-2, -1, 1, 2], size=count)
    else:
        vals = rng.integers(0 if dtype == "uint8" else -20, 21, size=count)
    return vals.astype(np.float32 if dtype == "bfloat16" else dtype)


def reference(stack, op, n):
    if op == "sum":
        return stack.sum(axis=0, dtype=stack.dtype)
    if op == "prod":
        return stack.prod(axis=0, dtype=stack.dtype)
    if op == "min":
        return stack.min(axis=0)
    if op == "max":
        return stack.max(axis=0)
    s = stack.astype(np.float64).sum(axis=0)
    if stack.dtype.kind in "iu":
        return (np.trunc(s / n)).astype(stack.dtype)  # integers truncate toward zero
    return (s / n).astype(stack.dtype)


def to_bf16(a):
    return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def from_bf16(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def check(got, want, dtype, op):
    if op == "avg" and dtype in ("float16", "bfloat16"):
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-2, err_msg=dtype)
    elif op == "avg" and dtype == "float32":
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=dtype)
    else:
        np.testing.assert_array_equal(got, want, err_msg=f"{dtype} {op}")


def every_dtype_and_op():
    r, n = ringrun.rank(), ringrun.size()
    for count in (1000, 7):
        for dtype in FLOATS + INTS + ["bfloat16"]:
            for op in OPS:
                mine = inputs(dtype, op, r, count)
                stack = np.stack([inputs(dtype, op, k, count) for k in range(n)])
                if dtype == "bfloat16":
                    buf = to_bf16(mine)
                    ringrun.allreduce(buf, op=op, dtype="bfloat16")
                    check(from_bf16(buf), reference(stack, op, n), dtype, op)
                else:
                    buf = mine.copy()
                    ringrun.allreduce(buf, op=op)
                    check(buf, reference(stack, op, n), dtype, op)
    # Many buffers at once, broadcast, allgather, alltoall, barrier.
    a, b = np.full(5, r + 1.0), np.full((2, 3), float(r))
    ringrun.allreduce_many([a, b], op="max")
    assert (a == n).all() and (b == n - 1).all()
    c = np.arange(6, dtype=np.int64) + 100 * r
    ringrun.broadcast(c, root=n - 1)
    np.testing.assert_array_equal(c, np.arange(6) + 100 * (n - 1))
    g = ringrun.allgather(np.full((2, 2), r, dtype=np.int32))
    assert g.shape == (2 * n, 2) and (g[::2, 0] == np.arange(n)).all()
    # All-to-all: block j of rank r holds 10 r + j; rank r receives 10 j + r from rank j.
    x = ringrun.alltoall((10 * r + np.repeat(np.arange(n), 3)).astype(np.int64))
    np.testing.assert_array_equal(x, np.repeat(10 * np.arange(n) + r, 3))
    ringrun.barrier()
    # Any writable buffer-protocol object.
    d = array.array("d", [1.5 * r, 2.0])
    ringrun.allreduce(d, op="sum")
    assert list(d) == [1.5 * sum(range(n)), 2.0 * n]
    ba = bytearray([r, 1])
    ringrun.allreduce(ba, op="max")
    assert list(ba) == [n - 1, 1]
    try:
        import torch
    except ImportError:
        print("torch not installed: torch tensors not checked")
    else:
        for dt in (torch.float32, torch.bfloat16, torch.int64):
            t = torch.full((9,), r + 1, dtype=dt)
            ringrun.allreduce(t, op="sum")
            assert (t == n * (n + 1) // 2).all(), (dt, t)
        print("torch tensors checked")


def mismatch():
    r = ringrun.rank()
    try:
        ringrun.allreduce(np.zeros(10 * (r + 1), dtype=np.float32))
    except ringrun.Mismatch as e:
        print(f"mismatch raised: {e}")
    else:
        raise SystemExit("no exception for mismatched sizes")


def cuda_tensors():
    """CUDA tensors through the device side the group gains at its first device collective
    (NCCL with a GPU per rank, else staged): sums, a broadcast and an allgather, exact."""
    import torch

    r, n = ringrun.rank(), ringrun.size()
    dev = torch.device("cuda", r % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    idx = torch.arange(1 << 20, device=dev, dtype=torch.float32) % 61
    t = idx * (r + 1) + r  # enqueued on torch's stream: the collective is ordered after it
    ringrun.allreduce(t)
    want = idx * (n * (n + 1) // 2) + n * (n - 1) // 2
    assert torch.equal(t, want), "allreduce"
    b = torch.full((1000,), float(r), device=dev)
    ringrun.broadcast(b, root=n - 1)
    assert torch.equal(b, torch.full_like(b, n - 1)), "broadcast"
    g = ringrun.allgather(torch.full((3,), float(r), device=dev))
    assert g.device == dev and g.tolist() == [float(q) for q in range(n) for _ in range(3)]
    many = [torch.ones(10, device=dev), torch.ones(7, device=dev)]
    ringrun.allreduce_many(many)
    assert all(torch.equal(m, torch.full_like(m, n)) for m in many), "allreduce_many"


def main():
    ringrun.init()
    assert ringrun.size() == int(sys.argv[2]), f"size {ringrun.size()}"
    modes = {"all": every_dtype_and_op, "mismatch": mismatch, "cuda": cuda_tensors}
    modes[sys.argv[1]]()
    print("ok", flush=True)
    ringrun.finalize()


if __name__ == "__main__":
    main()
