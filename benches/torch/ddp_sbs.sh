#!/usr/bin/env bash
# DDP step time, ringrun backend under `ringrun launch` beside Gloo under torchrun, alternating
# run by run on one machine; then the medians and ratios as a Markdown table.
#
#   ROUNDS=3 NS="2 4" benches/torch/ddp_sbs.sh OUT_DIR
#
# Needs a release build (cargo build --release -p ringrun-ffi -p ringrun-launcher) and a Python
# with torch (PYTHON, default target/pyenv/bin/python). TRANSPORTS lists ringrun's
# `--transport` values to run (default: "default shm"; "default" passes none). Unless FLOOR=0,
# each round also runs N lone workers at once (label "alone", the slowest one's step counts):
# the step without communication, on cores and memory shared as the N workers share them.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: ddp_sbs.sh OUT_DIR}
ROUNDS=${ROUNDS:-3}
NS=${NS:-"2 4"}
TRANSPORTS=${TRANSPORTS:-"default shm"}
PYTHON=${PYTHON:-target/pyenv/bin/python}
BIN=${RINGRUN_BIN:-target/release/ringrun}
export RINGRUN_LIB=${RINGRUN_LIB:-$PWD/target/release/libringrun.so}
export PYTHONPATH=$PWD/python
ARGS=${ARGS:-"--steps 20 --warmup 3 --batch 8"}
mkdir -p "$OUT"
res="$OUT/results.jsonl"
: > "$res"
torchrun_bin="$(dirname "$PYTHON")/torchrun"
for round in $(seq 1 "$ROUNDS"); do
  for n in $NS; do
    for t in $TRANSPORTS; do
      flag=(); [ "$t" = default ] || flag=(--transport "$t")
      timeout 600 "$BIN" launch --np "$n" "${flag[@]}" -- "$PYTHON" benches/torch/ddp_step.py \
        --backend ringrun $ARGS 2>"$OUT/err-$round-$n-$t.txt" \
        | sed -n 's/^\[[0-9]*\] \({.*}\)$/\1/p' | sed "s/}\$/, \"label\": \"ringrun-$t\", \"round\": $round}/" >> "$res"
    done
    if [ "${FLOOR:-1}" != 0 ]; then
      # The computation's floor: N processes at once, each training alone (a world of one),
      # so they share the cores and memory as the N workers do, with no communication.
      for i in $(seq 1 "$n"); do
        timeout 600 "$BIN" launch --np 1 -- "$PYTHON" benches/torch/ddp_step.py --backend ringrun \
          $ARGS 2>"$OUT/err-$round-$n-alone-$i.txt" | sed -n 's/^\[[0-9]*\] \({.*}\)$/\1/p' \
          | sed "s/\"np\": 1,/\"np\": $n,/; s/}\$/, \"label\": \"alone\", \"round\": $round}/" >> "$res" &
      done
      wait
    fi
    timeout 600 "$torchrun_bin" --standalone --nproc-per-node "$n" benches/torch/ddp_step.py \
      --backend gloo $ARGS 2>"$OUT/err-$round-$n-gloo.txt" \
      | grep '^{' | sed "s/}\$/, \"label\": \"gloo\", \"round\": $round}/" >> "$res"
  done
done
"$PYTHON" - "$res" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(list)
alone = collections.defaultdict(list)  # (np, round) -> each lone process's median
for r in rows:
    if r["label"] == "alone":
        alone[(r["np"], r["round"])].append(r["median_s"])
    else:
        by[(r["np"], r["label"])].append(r["median_s"])
for (n, _), v in alone.items():  # the slowest of the N, as for a job's step
    by[(n, "alone")].append(max(v))
print("| N | backend | runs | median step (ms) | ÷ Gloo |")
print("|---|---|---|---|---|")
for n in sorted({k[0] for k in by}):
    gloo = statistics.median(by.get((n, "gloo"), [float("nan")]))
    for (m, label), v in sorted(by.items()):
        if m == n:
            med = statistics.median(v)
            print(f"| {n} | {label} | {len(v)} | {med * 1e3:.1f} | {med / gloo:.2f} |")
PY
