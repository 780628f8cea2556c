#!/usr/bin/env bash
# Runs ringrun bench beside the peers (torch Gloo, Open MPI shm and TCP) on this machine, in one
# run, and prints Markdown tables with ratios. The peers must be installed first:
#   cp -r ../shared/peers DIR/ && bash DIR/peers/install.sh
# Usage: benches/compare/run.sh PEERS_DIR OUT_DIR     (env: NS="2 4", MAXB=64M, BUDGET=0.5,
#        TRANSPORTS="tcp quic", SKIP_PEERS=1 to reuse earlier peer results in OUT_DIR/peers)
set -euo pipefail
peers=$(cd "$1" && pwd); out=$(mkdir -p "$2" && cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
NS=${NS:-"2 4"} MAXB=${MAXB:-64M} BUDGET=${BUDGET:-0.5} TRANSPORTS=${TRANSPORTS:-"tcp quic"}
cargo build --release -p ringrun-launcher --manifest-path "$root/Cargo.toml"
ringrun="$root/target/release/ringrun"
mkdir -p "$out/peers" "$out/ringrun"
if [ -z "${SKIP_PEERS:-}" ]; then
  (cd "$peers" && NS="$NS" MAXB="$MAXB" BUDGET="$BUDGET" SKIP_KILL=1 bash peers/run_all.sh) | tee "$out/peers.log"
  cp "$peers"/peers/results/* "$out/peers/"
fi
for t in $TRANSPORTS; do
  for n in $NS; do
    echo "=== ringrun bench --transport $t --np $n"
    timeout 600 "$ringrun" bench --np "$n" --transport "$t" -b 8 -e "$MAXB" -f 2 -w 5 -n 1000 \
      --budget "$BUDGET" -J "$out/ringrun/ringrun_${t}_n$n.json" | tee "$out/ringrun/ringrun_${t}_n$n.txt"
  done
done
python3 "$here/tables.py" "$out" | tee "$out/tables.md"
