#!/bin/sh
# QUIC beside TCP (`ringrun bench`, N in NPS, default "2 4"), and at N = 2 quinn alone with the
# transport's configuration (collectives/examples/quic_ceiling.rs), in alternating rounds
# (ROUNDS, default 3); float32 sum, in place, sizes 8 B, 1 MiB, 8 MiB, 64 MiB. Prints the
# medians and QUIC's ratios to TCP and, at N = 2, to quinn alone.
#
#   cargo build --release -p ringrun-launcher -p ringrun-collectives --example quic_ceiling
#   benches/quic/run.sh                          # from the repository root
set -eu
ROUNDS=${ROUNDS:-3}
NPS=${NPS:-2 4}
RINGRUN=${RINGRUN:-$PWD/target/release/ringrun}
CEILING=${CEILING:-$PWD/target/release/examples/quic_ceiling}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for i in $(seq "$ROUNDS"); do
    for n in $NPS; do
        for t in tcp quic; do
            for s in 8:2000 1M:50 8M:20 64M:5; do
                iters=${s#*:} s=${s%:*}
                timeout 600 "$RINGRUN" bench --np "$n" --transport "$t" -b "$s" -e "$s" \
                    -n "$iters" -w $((iters / 10 + 1)) \
                    2>/dev/null | awk -v n="$n" -v t="$t" '$1 ~ /^[0-9]+$/ { print t, n, $1, $10, $12 }' >>"$OUT"
            done
        done
        if [ "$n" = 2 ]; then
            timeout 600 "$CEILING" 8 1M 8M 64M 2>/dev/null |
                awk '$1 ~ /^[0-9]+$/ { print "quinn", 2, $1, $2, $3 }' >>"$OUT"
        fi
    done
    echo "round $i done" >&2
done
echo "# targets: quic/tcp_time <= 2 under 1 MiB, quic/tcp_busbw >= 0.6 from 8 MiB"
python3 benches/side_by_side.py "$OUT" tcp quinn quic
