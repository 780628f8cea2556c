#!/bin/sh
# Time per step of `ringrun train-worker --step-ms 0` (one small allreduce and one commit a
# step, no computation): NP workers (default 4) on loopback, STEPS steps (default 20000),
# ROUNDS runs (default 7); prints each run and the median in µs per step (startup included,
# which is under 1 % at the default STEPS). A run whose worker 0 did not finish prints "failed"
# and is left out of the median.
#
#   cargo build --release -p ringrun-launcher
#   benches/launch/steps.sh                       # over shared memory (transport auto)
#   TRANSPORT=tcp STEPS=10000 benches/launch/steps.sh
#
# RINGRUN: the binary (default target/release/ringrun); pass two, space-separated, to
# alternate them run by run.
set -eu
NP=${NP:-4}
STEPS=${STEPS:-20000}
ROUNDS=${ROUNDS:-7}
TRANSPORT=${TRANSPORT:-auto}
RINGRUN=${RINGRUN:-$PWD/target/release/ringrun}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

run() { # BINARY ROUND -> seconds
    base=$((20000 + ($$ % 500) * 20 + $2 % 2 * 10))
    seeds=$(for i in $(seq 0 $((NP - 1))); do printf '127.0.0.1:%d,' $((base + i)); done)
    seeds=${seeds%,}
    start=$(date +%s%N)
    for i in $(seq 0 $((NP - 1))); do
        RINGRUN_SECRET=steps-bench-secret-0123456789abcdef RINGRUN_RUN_ID=steps$base \
            RINGRUN_BIND=127.0.0.1 RINGRUN_NODE_ID=$i RINGRUN_MEMBER_PORT=$((base + i)) \
            RINGRUN_SEEDS=$seeds RINGRUN_INITIAL_SIZE=$NP RINGRUN_MIN_SIZE=2 \
            RINGRUN_TRANSPORT=$TRANSPORT \
            "$1" train-worker --steps "$STEPS" --step-ms 0 >"$OUT/w$i" 2>&1 &
    done
    wait
    if grep -q '^final' "$OUT/w0"; then
        echo "$(( ($(date +%s%N) - start) / 1000 / STEPS )) µs/step"
    else
        echo "failed ($(tail -1 "$OUT/w0"))"
    fi
}

for r in $(seq "$ROUNDS"); do
    for bin in $RINGRUN; do
        echo "$(basename "$(dirname "$bin")")/$(basename "$bin") $(run "$bin" "$r")"
    done
done | tee "$OUT/all"
for bin in $RINGRUN; do
    name="$(basename "$(dirname "$bin")")/$(basename "$bin")"
    med=$(grep "^$name [0-9]" "$OUT/all" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "median $name: $med µs/step"
done
