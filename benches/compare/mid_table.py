#!/usr/bin/env python3
"""Medians of mid_rounds.sh output per N, size and algorithm, and ratios to Open MPI.

From 64 KiB up the table shows busbw (GB/s) and ringrun ÷ Open MPI; below, where busbw rounds
to nothing, time per call (µs) and Open MPI's time ÷ ringrun's (so above 1 is faster, as for
busbw).

`mid_table.py OUT --best` takes each side's best run (highest busbw, lowest time) instead of the
median: on a shared machine whose speed switches between modes from one run to the next, it
compares what each side does in the fast mode."""
import collections
import re
import statistics
import sys

BUSBW_FROM = 64 * 1024
runs = collections.defaultdict(list)
algos, cur = [], None
for line in open(sys.argv[1]):
    m = re.match(r"### round \d+ N=(\d+) (\w+)", line)
    if m:
        cur = (int(m[1]), m[2])
        if m[2] != "mpi" and m[2] not in algos:
            algos.append(m[2])
        continue
    f = line.split()
    if cur is None or len(f) < 9 or not f[0].isdigit():
        continue
    n, who, size = cur[0], cur[1], int(f[0])
    big = size >= BUSBW_FROM
    if who == "mpi":  # mpi_allreduce.py: time column 5, busbw column 7
        runs[(n, size, "mpi")].append(float(f[6] if big else f[4]))
    else:  # nccl-tests layout: out of place time 6, busbw 8; in place time 10, busbw 12
        runs[(n, size, who + " oop")].append(float(f[7] if big else f[5]))
        runs[(n, size, who + " ip")].append(float(f[11] if big else f[9]))

BEST = "--best" in sys.argv[2:]


def stat(n, s, k):
    """The median of the runs, or with --best the best of them."""
    xs = runs[(n, s, k)]
    if not BEST:
        return statistics.median(xs)
    return max(xs) if s >= BUSBW_FROM else min(xs)


def ratio(n, s, key, mpi):
    mine = stat(n, s, key)
    return mine / mpi if s >= BUSBW_FROM else mpi / mine


head = ["N", "size", "unit", "Open MPI (runs)"] + [f"{a} oop / ip" for a in algos]
head += [f"{a} ÷ MPI oop / ip" for a in algos]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for n in sorted({k[0] for k in runs}):
    for s in sorted({k[1] for k in runs if k[0] == n}):
        mpi = stat(n, s, "mpi")
        label = f"{s >> 10} KiB" if s >= 1024 else f"{s} B"
        row = [str(n), label, "GB/s" if s >= BUSBW_FROM else "µs"]
        row.append(f"{mpi:.2f} ({', '.join(f'{x:.2f}' for x in runs[(n, s, 'mpi')])})")
        row += [f"{stat(n, s, a + ' oop'):.2f} / {stat(n, s, a + ' ip'):.2f}" for a in algos]
        row += [f"{ratio(n, s, a + ' oop', mpi):.2f} / {ratio(n, s, a + ' ip', mpi):.2f}" for a in algos]
        print("| " + " | ".join(row) + " |")
