#!/usr/bin/env python3
"""Medians of mid_rounds.sh output: busbw per N, size and algorithm, and ratios to Open MPI."""
import collections
import re
import statistics
import sys

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
    if who == "mpi":  # mpi_allreduce.py: busbw is column 7
        runs[(n, size, "mpi")].append(float(f[6]))
    else:  # nccl-tests layout: out-of-place busbw column 8, in-place column 12
        runs[(n, size, who + " oop")].append(float(f[7]))
        runs[(n, size, who + " ip")].append(float(f[11]))

med = lambda n, s, k: statistics.median(runs[(n, s, k)])
head = ["N", "size", "Open MPI (runs)"] + [f"{a} oop / ip" for a in algos]
head += [f"{a} ÷ MPI oop / ip" for a in algos]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for n in sorted({k[0] for k in runs}):
    for s in sorted({k[1] for k in runs if k[0] == n}):
        mpi = med(n, s, "mpi")
        row = [str(n), f"{s >> 10} KiB"]
        row.append(f"{mpi:.2f} ({', '.join(f'{x:.2f}' for x in runs[(n, s, 'mpi')])})")
        row += [f"{med(n, s, a + ' oop'):.2f} / {med(n, s, a + ' ip'):.2f}" for a in algos]
        row += [f"{med(n, s, a + ' oop') / mpi:.2f} / {med(n, s, a + ' ip') / mpi:.2f}" for a in algos]
        print("| " + " | ".join(row) + " |")
