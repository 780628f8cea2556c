#!/usr/bin/env python3
"""Medians of mid_rounds.sh output per N, size and algorithm, and ratios to Open MPI.

From 64 KiB up the table shows busbw (GB/s) and ringrun ÷ Open MPI; below, where busbw rounds
to nothing, time per call (µs) and Open MPI's time ÷ ringrun's (so above 1 is faster, as for
busbw).

`mid_table.py OUT --best` takes each side's best run (highest busbw, lowest time) instead of the
median: on a shared machine whose speed switches between modes from one run to the next, it
compares what each side does in the fast mode.

`mid_table.py OUT --mode fast` (or `slow`) keeps, on both sides, only the runs whose probes
before and after (mid_rounds.sh's "# probe" lines, handoff_probe.c) both say that mode: the
comparison within one machine state, without picking winners."""
import argparse
import collections
import re
import statistics

BUSBW_FROM = 64 * 1024

cli = argparse.ArgumentParser()
cli.add_argument("out", help="mid_rounds.sh output")
cli.add_argument("--best", action="store_true", help="each side's best run, not the median")
cli.add_argument("--mode", choices=["all", "fast", "slow"], default="all",
                 help="keep only runs whose probes before and after both say this mode")
cli.add_argument("--split", type=float, default=8.0,
                 help="handoff GB/s that separates the fast mode from the slow one")
args = cli.parse_args()


def read_runs(path):
    """[(n, who, [rows], probe before, probe after)]: a probe is the handoff GB/s printed by
    the nearest "# probe" line on either side of the run, None where there is none."""
    runs, last_probe = [], None
    for line in open(path):
        m = re.match(r"# probe handoff ([0-9.]+) GB/s", line)
        if m:
            last_probe = float(m[1])
            if runs and runs[-1][4] is None:
                runs[-1][4] = last_probe
            continue
        m = re.match(r"### round \d+ N=(\d+) (\w+)", line)
        if m:
            runs.append([int(m[1]), m[2], [], last_probe, None])
            continue
        f = line.split()
        if runs and len(f) >= 9 and f[0].isdigit():
            runs[-1][2].append(f)
    return runs


def mode_of(before, after):
    if before is None or after is None:
        return None
    if min(before, after) >= args.split:
        return "fast"
    return "slow" if max(before, after) < args.split else "mixed"


runs = collections.defaultdict(list)
algos, kept, seen = [], 0, 0
for n, who, rows, before, after in read_runs(args.out):
    if who != "mpi" and who not in algos:
        algos.append(who)
    seen += 1
    if args.mode != "all" and mode_of(before, after) != args.mode:
        continue
    kept += 1
    for f in rows:
        size = int(f[0])
        big = size >= BUSBW_FROM
        if who == "mpi":  # mpi_allreduce.py: time column 5, busbw column 7
            runs[(n, size, "mpi")].append(float(f[6] if big else f[4]))
        else:  # nccl-tests layout: out of place time 6, busbw 8; in place time 10, busbw 12
            runs[(n, size, who + " oop")].append(float(f[7] if big else f[5]))
            runs[(n, size, who + " ip")].append(float(f[11] if big else f[9]))

BEST = args.best


def stat(n, s, k):
    """The median of the runs, or with --best the best of them."""
    xs = runs[(n, s, k)]
    if not BEST:
        return statistics.median(xs)
    return max(xs) if s >= BUSBW_FROM else min(xs)


def ratio(n, s, key, mpi):
    mine = stat(n, s, key)
    return mine / mpi if s >= BUSBW_FROM else mpi / mine


if args.mode != "all":
    print(f"{kept} of {seen} runs in the {args.mode} mode (handoff split at {args.split} GB/s)\n")
head = ["N", "size", "unit", "Open MPI (runs)"] + [f"{a} oop / ip" for a in algos]
head += [f"{a} ÷ MPI oop / ip" for a in algos]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for n in sorted({k[0] for k in runs}):
    for s in sorted({k[1] for k in runs if k[0] == n}):
        if not all(runs[(n, s, k)] for k in ["mpi"] + [a + " oop" for a in algos]):
            continue  # no run of one side in this mode
        mpi = stat(n, s, "mpi")
        label = f"{s >> 10} KiB" if s >= 1024 else f"{s} B"
        row = [str(n), label, "GB/s" if s >= BUSBW_FROM else "µs"]
        mpi_runs = f"{mpi:.2f} ({', '.join(f'{x:.2f}' for x in runs[(n, s, 'mpi')])})"
        if args.mode != "all":  # how many runs of each side the mode kept
            mpi_runs += f" [{len(runs[(n, s, 'mpi')])} / {len(runs[(n, s, algos[0] + ' oop')])} runs]"
        row.append(mpi_runs)
        row += [f"{stat(n, s, a + ' oop'):.2f} / {stat(n, s, a + ' ip'):.2f}" for a in algos]
        row += [f"{ratio(n, s, a + ' oop', mpi):.2f} / {ratio(n, s, a + ' ip', mpi):.2f}" for a in algos]
        print("| " + " | ".join(row) + " |")
