"""Per-call cost of ``torch.distributed.all_reduce`` on the ringrun backend, beside the raw C
call on the same buffer, at 8 B and 16 MiB (float32, sum):

    ringrun launch --np 2 --transport tcp -- python benches/torch/allreduce_call.py
    ringrun bench --np 2 --transport tcp -b 8 -e 16M -f 2097152

Rank 0 prints one JSON line per size: the median time per call of each path over ``--rounds``
rounds (each the mean of a loop), and busbw = bytes / t * 2(n-1)/n.
"""

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist

import ringrun
import ringrun.torch  # noqa: F401  (registers the backend)
from ringrun._lib import lib


def per_call(fn, iters):
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=2000, help="calls per round at 8 B")
    args = ap.parse_args()
    dist.init_process_group("ringrun")
    n = dist.get_world_size()
    c = lib()
    for nbytes in (8, 16 << 20):
        t = torch.ones(nbytes // 4)
        ptr, count = t.data_ptr(), t.numel()
        iters = args.iters if nbytes <= 1 << 16 else max(5, args.iters // 200)
        torch_t, raw_t = [], []
        for _ in range(args.rounds):  # alternate the two paths round by round
            torch_t.append(per_call(lambda: dist.all_reduce(t), iters))
            raw_t.append(per_call(lambda: c.ringrun_allreduce(ptr, ptr, count, 0, 0), iters))
        if dist.get_rank() == 0:
            tt, rt = statistics.median(torch_t), statistics.median(raw_t)
            bus = lambda s: nbytes / s * 2 * (n - 1) / n / 1e9 if n > 1 else 0.0  # noqa: E731
            print(json.dumps({
                "np": n, "bytes": nbytes, "torch_us": tt * 1e6, "c_call_us": rt * 1e6,
                "overhead_us": (tt - rt) * 1e6, "torch_busbw": bus(tt), "c_call_busbw": bus(rt),
            }), flush=True)
    dist.destroy_process_group()
    ringrun.finalize()


if __name__ == "__main__":
    main()
