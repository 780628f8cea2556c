"""Per-call time of ``torch.distributed.all_to_all_single`` (equal splits, float32) on any
backend, for 4 KiB, 1 MiB and 16 MiB per rank:

    ringrun launch --np 4 -- python benches/torch/alltoall_call.py --backend ringrun
    torchrun --standalone --nproc-per-node 4 benches/torch/alltoall_call.py --backend gloo

Rank 0 prints one JSON line per size: the median of 5 rounds, each the mean of a loop.
"""

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True, choices=["ringrun", "gloo"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.backend == "ringrun":
        import ringrun.torch  # noqa: F401  (registers the backend)
    dist.init_process_group(args.backend)
    n, rank = dist.get_world_size(), dist.get_rank()
    for nbytes in (4096, 1 << 20, 16 << 20):
        x = torch.ones(nbytes // 4)
        y = torch.empty_like(x)
        iters = max(5, min(500, (64 << 20) // nbytes))
        rounds = []
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(iters):
                dist.all_to_all_single(y, x)
            rounds.append((time.perf_counter() - t0) / iters)
        if rank == 0:
            print(json.dumps({"backend": args.backend, "np": n, "bytes": nbytes,
                              "us": statistics.median(rounds) * 1e6}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
