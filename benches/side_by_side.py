"""Medians of alternating runs, side by side: the table the `benches/*/run.sh` scripts print.

    python3 benches/side_by_side.py FILE SIDE [SIDE ...]

FILE holds lines `SIDE N BYTES TIME_US BUSBW_GB/S` (other lines are skipped). For every (N,
size) it prints each side's median time and busbw, then, for every later side Y against every
earlier side X: Y's added time (us), Y's time as a multiple of X's, and Y's busbw as a fraction
of X's. Rows where a side has no run show nan for it.
"""

import statistics
import sys


def load(path, sides):
    rows = {}
    for line in open(path):
        w = line.split()
        if len(w) != 5 or w[0] not in sides:
            continue
        side, n, size, t, bus = w[0], int(w[1]), int(w[2]), float(w[3]), float(w[4])
        rows.setdefault((n, size), {}).setdefault(side, []).append((t, bus))
    return rows


def main():
    path, sides = sys.argv[1], sys.argv[2:]
    pairs = [(x, y) for i, x in enumerate(sides) for y in sides[i + 1 :]]
    head = ["N", "bytes"]
    head += [f"{s}_{u}" for s in sides for u in ("us", "GB/s")]
    head += [f"{y}-{x}_us {y}/{x}_time {y}/{x}_busbw" for x, y in pairs]
    head = " ".join(head).split()
    table = [head]
    for (n, size), by in sorted(load(path, set(sides)).items()):
        nan = (float("nan"), float("nan"))
        med = {
            s: tuple(statistics.median(r[k] for r in by[s]) for k in (0, 1)) if s in by else nan
            for s in sides
        }
        row = [str(n), str(size)]
        row += [f"{v:.{d}f}" for s in sides for v, d in zip(med[s], (2, 3))]
        for x, y in pairs:
            (tx, bx), (ty, bus_y) = med[x], med[y]
            busbw = bus_y / bx if bx > 0 else float("nan")
            row += [f"{ty - tx:.2f}", f"{ty / tx:.2f}", f"{busbw:.2f}"]
        table.append(row)
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print(" ".join(c.rjust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
