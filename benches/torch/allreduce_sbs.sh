#!/usr/bin/env bash
# torch.distributed.all_reduce on the ringrun backend beside `ringrun bench` with the same
# transport, alternating run by run: 8 B and 16 MiB, float32 sum, in place.
#
#   ROUNDS=3 NS="2 4" TRANSPORTS="shm tcp" benches/torch/allreduce_sbs.sh OUT_DIR
#
# Needs a release build and a Python with torch (PYTHON, default target/pyenv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: allreduce_sbs.sh OUT_DIR}
ROUNDS=${ROUNDS:-3}
NS=${NS:-"2 4"}
TRANSPORTS=${TRANSPORTS:-"shm tcp"}
PYTHON=${PYTHON:-target/pyenv/bin/python}
BIN=${RINGRUN_BIN:-target/release/ringrun}
export RINGRUN_LIB=${RINGRUN_LIB:-$PWD/target/release/libringrun.so}
export PYTHONPATH=$PWD/python
mkdir -p "$OUT"
: > "$OUT/torch.jsonl"
: > "$OUT/bench.txt"
for round in $(seq 1 "$ROUNDS"); do
  for n in $NS; do
    for t in $TRANSPORTS; do
      echo "# round $round np $n transport $t" >> "$OUT/bench.txt"
      timeout 300 "$BIN" bench --np "$n" --transport "$t" -b 8 -e 16M -f 2097152 -n 2000 -w 200 \
        --budget 2 >> "$OUT/bench.txt" 2>/dev/null
      timeout 300 "$BIN" launch --np "$n" --transport "$t" -- "$PYTHON" \
        benches/torch/allreduce_call.py 2>/dev/null \
        | sed -n 's/^\[[0-9]*\] \({.*}\)$/\1/p' \
        | sed "s/}\$/, \"transport\": \"$t\", \"round\": $round}/" >> "$OUT/torch.jsonl"
    done
  done
done
"$PYTHON" - "$OUT" <<'PY'
import collections, json, re, statistics, sys
out = sys.argv[1]
bench = collections.defaultdict(list)  # (np, transport, bytes) -> [(time_us, busbw)]
key = None
for line in open(f"{out}/bench.txt"):
    m = re.match(r"# round \d+ np (\d+) transport (\w+)", line)
    if m:
        key = (int(m[1]), m[2])
        continue
    f = line.split()
    if key and len(f) >= 13 and f[0].isdigit() and int(f[0]) in (8, 16 << 20):
        # nccl-tests columns: size count type redop root | oop time algbw busbw #wrong | ip ...
        bench[key + (int(f[0]),)].append((float(f[9]), float(f[11])))
torch = collections.defaultdict(list)
for line in open(f"{out}/torch.jsonl"):
    r = json.loads(line)
    torch[(r["np"], r["transport"], r["bytes"])].append(r)
print("| N | transport | size | ringrun bench (in place) | torch all_reduce | C call in the same process | torch − bench |")
print("|---|---|---|---|---|---|---|")
for k in sorted(torch):
    n, t, b = k
    rows, ref = torch[k], bench.get(k, [])
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    if b == 8:
        bt, tt, ct = med([x[0] for x in ref]), med([r["torch_us"] for r in rows]), med([r["c_call_us"] for r in rows])
        print(f"| {n} | {t} | 8 B | {bt:.1f} µs | {tt:.1f} µs | {ct:.1f} µs | {tt - bt:+.1f} µs |")
    else:
        bb, tb, cb = med([x[1] for x in ref]), med([r["torch_busbw"] for r in rows]), med([r["c_call_busbw"] for r in rows])
        print(f"| {n} | {t} | 16 MiB | {bb:.2f} GB/s | {tb:.2f} GB/s | {cb:.2f} GB/s | {tb / bb:.2f}× busbw |")
PY
