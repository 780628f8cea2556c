#!/bin/sh
# Two network-namespace "hosts" of two ranks each (joined by one veth pair): `ringrun bench`
# under `--transport auto` (shared memory in each host, TCP across, the hierarchical
# allreduce) beside `--transport tcp` (flat TCP between all four), in alternating rounds
# (ROUNDS, default 3), float32 sum in place, 8 B to 64 MiB. Needs root and `ip netns`; the
# namespaces and their addresses (10.215.0.0/24) exist only for the run.
#
#   cargo build --release -p ringrun-launcher
#   sudo benches/hosts/run.sh                    # from the repository root
set -eu
ROUNDS=${ROUNDS:-3}
RINGRUN=${RINGRUN:-$PWD/target/release/ringrun}
TAG=rrh$$
A=${TAG}a B=${TAG}b
OUT=$(mktemp)
cleanup() {
    for ns in "$A" "$B"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -f "$OUT"
}
trap cleanup EXIT
ip netns add "$A"
ip netns add "$B"
ip link add "${TAG}x" netns "$A" type veth peer name "${TAG}y" netns "$B"
ip -n "$A" addr add 10.215.0.1/24 dev "${TAG}x"
ip -n "$B" addr add 10.215.0.2/24 dev "${TAG}y"
for ns in "$A" "$B"; do
    ip -n "$ns" link set lo up
done
ip -n "$A" link set "${TAG}x" up
ip -n "$B" link set "${TAG}y" up
export RINGRUN_SECRET="hosts-bench-secret-0123456789"
port=21000
for i in $(seq "$ROUNDS"); do
    for t in auto tcp; do
        port=$((port + 10))
        peers="10.215.0.1:$port,10.215.0.1:$((port + 1)),10.215.0.2:$((port + 2)),10.215.0.2:$((port + 3))"
        for r in 3 2 1; do
            ns=$A
            [ "$r" -ge 2 ] && ns=$B
            ip netns exec "$ns" timeout 600 "$RINGRUN" bench --rank "$r" --peers "$peers" \
                --transport "$t" -b 8 -e 64M -f 8 -n 2000 -w 50 --budget 0.5 >/dev/null 2>&1 &
        done
        ip netns exec "$A" timeout 600 "$RINGRUN" bench --rank 0 --peers "$peers" \
            --transport "$t" -b 8 -e 64M -f 8 -n 2000 -w 50 --budget 0.5 2>/dev/null |
            awk -v t="$t" '/transport/ { print "#", $0 } $1 ~ /^[0-9]+$/ { print t, 4, $1, $10, $12 }' >>"$OUT"
        wait
    done
    echo "round $i done" >&2
done
grep '^#' "$OUT" | sort -u
python3 benches/side_by_side.py "$OUT" auto tcp
