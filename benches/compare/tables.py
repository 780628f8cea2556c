#!/usr/bin/env python3
"""Markdown tables of ringrun bench beside the peers, from one run of run.sh.

  python3 benches/compare/tables.py OUT_DIR

Reads OUT_DIR/peers/{gloo,mpi_shm,mpi_tcp}_n<N>.json (the peers' format) and
OUT_DIR/ringrun/ringrun_<transport>_n<N>.json (nccl-tests' -J format). Gloo runs in place and
MPI out of place, so each is compared with ringrun's matching half.
"""
import glob
import json
import os
import sys

out = sys.argv[1]
series = {}  # (name, n) -> {size: (busbw, time_us)}
for f in glob.glob(os.path.join(out, "peers", "*_n*.json")):
    j = json.load(open(f))
    if "rows" not in j:
        continue
    name = os.path.basename(f)[:-5].rsplit("_n", 1)[0]
    series[(name, j["n"])] = {r["size"]: (r["busbw"], r["time_us"]) for r in j["rows"]}
for f in glob.glob(os.path.join(out, "ringrun", "*_n*.json")):
    j = json.load(open(f))
    t = j["transport"]
    for half, tag in (("in_place", "ip"), ("out_of_place", "oop")):
        series[(f"ringrun-{t}-{tag}", j["ranks"])] = {
            r["size"]: (r[half]["bus_bw"], r[half]["time"]) for r in j["results"]}

ns = sorted({n for _, n in series})
names = sorted({k for k, _ in series})


def hsize(b):
    for u, m in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= m:
            return f"{b // m} {u}"
    return f"{b} B"


def table(n, field, fmt):
    cols = [k for k in names if (k, n) in series]
    sizes = sorted({s for k in cols for s in series[(k, n)]})
    print(f"\n{field} by size, N = {n}\n")
    print("| size | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for s in sizes:
        cells = []
        for k in cols:
            v = series[(k, n)].get(s)
            cells.append(fmt.format(v[0] if field == "busbw (GB/s)" else v[1]) if v else "-")
        print(f"| {hsize(s)} | " + " | ".join(cells) + " |")


def ratio(ours, peer, n, size, field=0):
    a, b = series.get((ours, n), {}).get(size), series.get((peer, n), {}).get(size)
    if not a or not b or not b[field]:
        return "-"
    return f"{a[field] / b[field]:.2f}"


for n in ns:
    table(n, "busbw (GB/s)", "{:.3f}")
    table(n, "time (us)", "{:.1f}")

print("\nRatios (ringrun / peer; for time, < 1 is better)\n")
print("| N | size | tcp/gloo busbw | tcp/mpi-tcp busbw | tcp/mpi-shm busbw | quic/tcp busbw | tcp/gloo 8 B time |")
print("|---|---|---|---|---|---|---|")
for n in ns:
    for s in [8, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20]:
        if not any(s in series.get((k, n), {}) for k in names):
            continue
        t8 = ratio("ringrun-tcp-ip", "gloo", n, 8, 1) if s == 8 else ""
        print(f"| {n} | {hsize(s)} | {ratio('ringrun-tcp-ip', 'gloo', n, s)} | "
              f"{ratio('ringrun-tcp-oop', 'mpi_tcp', n, s)} | {ratio('ringrun-tcp-oop', 'mpi_shm', n, s)} | "
              f"{ratio('ringrun-quic-ip', 'ringrun-tcp-ip', n, s)} | {t8} |")

if any(k.startswith("ringrun-shm") for k in names):
    print("\nShared memory (ringrun shm / peer; for time, < 1 is better)\n")
    print("| N | size | shm/mpi-shm busbw | shm/gloo busbw | shm/tcp busbw | shm/mpi-shm time |")
    print("|---|---|---|---|---|---|")
    for n in ns:
        for s in [8, 64 << 10, 256 << 10, 1 << 20, 2 << 20, 4 << 20, 16 << 20, 64 << 20,
                  256 << 20]:
            if not any(s in series.get((k, n), {}) for k in names):
                continue
            print(f"| {n} | {hsize(s)} | {ratio('ringrun-shm-oop', 'mpi_shm', n, s)} | "
                  f"{ratio('ringrun-shm-ip', 'gloo', n, s)} | "
                  f"{ratio('ringrun-shm-oop', 'ringrun-tcp-oop', n, s)} | "
                  f"{ratio('ringrun-shm-oop', 'mpi_shm', n, s, 1)} |")
