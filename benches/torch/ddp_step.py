"""DDP step time of a communication-heavy model on CPU: one script for every backend.

    ringrun launch --np 4 -- python benches/torch/ddp_step.py --backend ringrun
    torchrun --nproc-per-node 4 benches/torch/ddp_step.py --backend gloo

An MLP of about 25M parameters (1024 -> 4096 -> 4096 -> 1024) learns synthetic data with torch's
DDP and SGD. Small per-rank batches keep the step dominated by the gradient allreduce (about
100 MB per step), which is what the backends differ in. Rank 0 prints one JSON line: the
median, p10 and p90 step time over the timed steps (after warm-up steps, which include DDP's
bucket rebuild), and the parameter count.
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True, choices=["ringrun", "gloo"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.backend == "ringrun":
        import ringrun.torch  # noqa: F401  (registers the backend)
    dist.init_process_group(args.backend)
    rank, size = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)
    w = args.width
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, w), torch.nn.ReLU(),
        torch.nn.Linear(w, w), torch.nn.ReLU(),
        torch.nn.Linear(w, 1024),
    )
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args.batch, 1024, generator=g), torch.randn(args.batch, 1024, generator=g)

    times = []
    for step in range(args.warmup + args.steps):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    # The slowest rank's time is the step's.
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        q = statistics.quantiles(t.tolist(), n=10)
        print(json.dumps({
            "backend": args.backend, "np": size, "params": sum(p.numel() for p in model.parameters()),
            "batch": args.batch, "median_s": statistics.median(t.tolist()), "p10_s": q[0],
            "p90_s": q[-1], "transport": os.environ.get("RINGRUN_TRANSPORT", ""),
        }), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
