"""The cost of ringrun.data.ElasticSampler.next_indices() per step from Python (the ctypes call,
the Feistel permutation in Rust, the numpy copy), and the sampler's memory, at 10^6 and 10^9
samples; beside torch's DistributedSampler + BatchSampler where torch is installed (which
materialises each epoch's permutation, so it is timed at 10^6 only).

    ringrun launch --np 4 -- python benches/data/sampler.py [--batch 4096] [--steps 3000]

Rank 0 prints one line per configuration: median and 99th percentile microseconds per step,
and the memory its making and first step allocated (Python's
allocations; the Rust sampler is under 128 bytes whatever the number of samples).
"""

import argparse
import statistics
import time
import tracemalloc

import numpy  # noqa: F401  (imported before the memory is measured)

import ringrun
from ringrun.data import ElasticSampler


def peak_kib(make):
    """What ``make()`` and one step of what it makes allocate at the peak, in KiB (Python's
    allocations, numpy's included; the Rust sampler itself is under 128 bytes)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    thing, step = make()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return thing, step, peak // 1024


def timed(step, steps):
    for _ in range(50):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter_ns()
        step()
        times.append(time.perf_counter_ns() - t)
    times.sort()
    return statistics.median(times) / 1e3, times[int(0.99 * len(times))] / 1e3


def ringrun_row(n, batch, steps):
    def make():
        sampler = ElasticSampler(n, batch, seed=1)
        return sampler, sampler.next_indices  # the first call checks the ranks agree

    sampler, step, added = peak_kib(make)
    med, p99 = timed(step, steps)
    return f"ringrun ElasticSampler  n={n:.0e} share={len(sampler.peek())}", med, p99, added


def torch_row(n, batch, steps, rank, size):
    import torch.utils.data as tud

    dist = tud.DistributedSampler(range(n), num_replicas=size, rank=rank, seed=1)
    batches = tud.BatchSampler(dist, batch // size, drop_last=False)
    state = {"it": iter(batches), "epoch": 0}

    def step():
        try:
            next(state["it"])
        except StopIteration:  # the next epoch: a new permutation, as a training loop would
            state["epoch"] += 1
            dist.set_epoch(state["epoch"])
            state["it"] = iter(batches)
            next(state["it"])

    _, _, added = peak_kib(lambda: (None, step))  # the first step builds the permutation
    med, p99 = timed(step, steps)
    return f"torch DistributedSampler n={n:.0e} share={batch // size}", med, p99, added


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    ringrun.init()
    rank, size = ringrun.rank(), ringrun.size()
    rows = [ringrun_row(n, args.batch, args.steps) for n in (10**6, 10**9)]
    try:
        rows.append(torch_row(10**6, args.batch, args.steps, rank, size))
    except ImportError:
        pass
    if rank == 0:
        print(f"world {size}, global batch {args.batch}, {args.steps} steps")
        print(f"{'sampler':44} {'median us':>10} {'p99 us':>8} {'peak KiB':>9}")
        for name, med, p99, added in rows:
            print(f"{name:44} {med:10.1f} {p99:8.1f} {added:9d}")
    ringrun.finalize()


if __name__ == "__main__":
    main()
