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
python3 - "$OUT" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, n, size, t, bus = line.split()
    rows.setdefault((int(n), int(size)), {}).setdefault(who, []).append((float(t), float(bus)))
print("# ratios: time for sizes under 1 MiB (target <= 2), busbw from 1 MiB (target >= 0.6)")
print(f"{'N':>2} {'bytes':>9} {'tcp_us':>9} {'quic_us':>9} {'quinn_us':>9} {'tcp_GB/s':>8} "
      f"{'quic_GB/s':>9} {'quinn_GB/s':>10} {'quic/tcp':>8} {'quic/quinn':>10}")
for (n, size), by in sorted(rows.items()):
    med = lambda who, k: statistics.median(r[k] for r in by[who]) if who in by else float("nan")
    tt, qt, ct = med("tcp", 0), med("quic", 0), med("quinn", 0)
    tb, qb, cb = med("tcp", 1), med("quic", 1), med("quinn", 1)
    # busbw for the large sizes, time for the small ones
    if size >= 1 << 20:
        r1, r2 = qb / tb, (qb / cb if cb == cb else float("nan"))
    else:
        r1, r2 = qt / tt, (qt / ct if ct == ct else float("nan"))
    print(f"{n:>2} {size:>9} {tt:>9.1f} {qt:>9.1f} {ct:>9.1f} {tb:>8.3f} {qb:>9.3f} {cb:>10.3f} "
          f"{r1:>8.2f} {r2:>10.2f}")
PY
