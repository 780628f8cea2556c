"""Launch-to-first-allreduce: one torch CPU tensor allreduced once, under torchrun (gloo) or
under `ringrun launch` (ringrun, chosen when the launcher's RINGRUN_SEEDS is set), with the
same command line. argv[1] is the launch time (`date +%s.%N`, taken by the shell just before
the launcher starts); rank 0 prints the milliseconds from it to: the worker's start (before
imports), torch imported, the group joined, the allreduce done.

    torchrun             --standalone --nproc-per-node 2 first_allreduce.py "$(date +%s.%N)"
    ringrun launch       --standalone --nproc-per-node 2 first_allreduce.py "$(date +%s.%N)"
"""

import time

STARTED = time.time()

import os  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

IMPORTED = time.time()
launched = float(sys.argv[1])
world = int(os.environ["WORLD_SIZE"])
x = torch.ones(1024)
if os.environ.get("RINGRUN_SEEDS"):
    import ringrun

    ringrun.init()
    JOINED = time.time()
    ringrun.allreduce(x)
    DONE = time.time()
    ringrun.finalize()
    backend = "ringrun"
else:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    JOINED = time.time()
    dist.all_reduce(x)
    DONE = time.time()
    dist.destroy_process_group()
    backend = "gloo"
assert x[0].item() == world, x[0].item()
if os.environ["RANK"] == "0":
    ms = [round((t - launched) * 1000, 1) for t in (STARTED, IMPORTED, JOINED, DONE)]
    print(f"first_allreduce {backend} started {ms[0]} imported {ms[1]} joined {ms[2]} "
          f"done {ms[3]}", flush=True)
