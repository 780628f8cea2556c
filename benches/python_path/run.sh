#!/bin/sh
# The Python path under `ringrun launch` (default flags) beside `ringrun bench`, in alternating
# rounds: float32 sum in place, 8 B to 64 MiB, for each N in NPS (default "2 4 8"), ROUNDS
# rounds each (default 3). Prints, per N and size, the medians of both, the Python path's busbw
# as a fraction of the bench's and its added time.
#
#   cargo build --release -p ringrun-launcher -p ringrun-ffi
#   benches/python_path/run.sh                  # from the repository root
#
# PYENV: a virtual environment with numpy (default target/pyenv).
set -eu
ROUNDS=${ROUNDS:-3}
NPS=${NPS:-2 4 8}
MAX=${MAX:-67108864}
PYENV=${PYENV:-$PWD/target/pyenv}
RINGRUN=${RINGRUN:-$PWD/target/release/ringrun}
export RINGRUN_LIB=${RINGRUN_LIB:-$PWD/target/release/libringrun.so}
export PYTHONPATH=$PWD/python
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for n in $NPS; do
    for i in $(seq "$ROUNDS"); do
        timeout 600 "$RINGRUN" bench --np "$n" -b 8 -e "$MAX" -f 2 -n 2000 -w 50 --budget 0.5 2>/dev/null |
            awk -v n="$n" '$1 ~ /^[0-9]+$/ { print "bench", n, $1, $10, $12 }' >>"$OUT"
        timeout 600 "$RINGRUN" launch --nproc-per-node "$n" -- \
            "$PYENV/bin/python" python/bench.py --sweep "8:$MAX:2" --iters 2000 2>/dev/null |
            awk -v n="$n" '$1 == "[0]" && $2 ~ /^[0-9]+$/ { print "python", n, $2, $3, $4 }' >>"$OUT"
        echo "N=$n round $i done" >&2
    done
done
python3 benches/side_by_side.py "$OUT" bench python
