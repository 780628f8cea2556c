#!/usr/bin/env python3
"""Peer baseline for `ringrun bench --device cuda`: torch.distributed all_reduce on CUDA tensors.

    python3 benches/gpu/torch_allreduce.py --backend nccl --np 1 -b 8 -e 1G
    python3 benches/gpu/torch_allreduce.py --backend gloo --np 4 -b 8 -e 256M   # ranks share GPU 0

Ranks are spawned on 127.0.0.1; rank r uses GPU r % device_count (NCCL refuses two ranks on one
GPU, Gloo stages CUDA tensors through host memory). Rank 0 prints nccl-tests' all_reduce_perf
in-place columns: size count type redop root time(us) algbw busbw #wrong. Timing as nccl-tests:
`iters` back-to-back calls on the default stream, one synchronize, the mean per call, then the
maximum over ranks. #wrong checks one reduction of rank-dependent integers (exact in float32).
"""
import argparse
import os
import socket
import sys
import time


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper()
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, args, port):
    import torch
    import torch.distributed as dist

    dev = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=args.np)
    n = args.np
    if rank == 0:
        name = torch.cuda.get_device_name(dev)
        print(f"# torch {torch.__version__} {args.backend} nranks {n} device {name}")
        if args.backend == "nccl":
            print(f"# nccl {'.'.join(map(str, torch.cuda.nccl.version()))}")
        print("#       size         count      type   redop    root     time   algbw   busbw "
              "#wrong")
        print("#        (B)    (elements)                               (us)  (GB/s)  (GB/s)")
    size = args.minbytes
    while size <= args.maxbytes:
        count = max(size // 4, 1)
        buf = torch.ones(count, dtype=torch.float32, device=dev)
        iters = args.iters if size < (64 << 20) else max(args.iters // 4, 5)
        for _ in range(args.warmup):
            dist.all_reduce(buf)
        torch.cuda.synchronize(dev)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(buf)
        torch.cuda.synchronize(dev)
        us = (time.perf_counter() - t0) / iters * 1e6
        t = torch.tensor([us], dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        us = t.item()
        idx = torch.arange(count, device=dev, dtype=torch.int64) % 61
        buf.copy_(idx * (rank + 1) + rank)
        dist.all_reduce(buf)
        want = idx * (n * (n + 1) // 2) + n * (n - 1) // 2
        wrong = torch.tensor([(buf != want).sum().item()], device=dev)
        dist.all_reduce(wrong)
        if rank == 0:
            algbw = count * 4 / us / 1e3
            busbw = algbw * 2 * (n - 1) / n
            print(f"{count * 4:12d}  {count:12d}     float     sum      -1 {us:8.2f} "
                  f"{algbw:7.2f} {busbw:7.2f} {int(wrong.item()):6d}", flush=True)
        size *= 2
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    p.add_argument("--np", type=int, default=1)
    p.add_argument("-b", "--minbytes", type=parse_size, default=8)
    p.add_argument("-e", "--maxbytes", type=parse_size, default=256 << 20)
    p.add_argument("-n", "--iters", type=int, default=20)
    p.add_argument("-w", "--warmup", type=int, default=5)
    p.add_argument("--rank", type=int)
    p.add_argument("--port", type=int)
    args = p.parse_args()
    if args.rank is not None:
        return worker(args.rank, args, args.port)
    port = free_port()
    import subprocess
    procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--rank", str(r),
                               "--port", str(port)],
                              stdout=None if r == 0 else subprocess.DEVNULL)
             for r in range(args.np)]
    deadline = time.time() + 900
    for pr in procs:
        try:
            pr.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            sys.exit("timed out")
    sys.exit(max(pr.returncode for pr in procs))


if __name__ == "__main__":
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    main()
