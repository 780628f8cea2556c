#!/usr/bin/env bash
# Mid sizes (256 KiB - 8 MiB), interleaved rounds: Open MPI shm, then ringrun shm with each
# allreduce algorithm in $ALGOS, back to back, so that each round sees the same machine.
#   benches/compare/mid_rounds.sh PEERS_DIR > out.txt   (env: NS="4 8", ROUNDS=3, ALGOS="ring hd",
#                                                         MINB=256K, MAXB=8M)
#   python3 benches/compare/mid_table.py out.txt        (medians and ratios, Markdown)
# PEERS_DIR holds peers/ as installed by ../shared/peers/install.sh.
set -u
peers=${1:?usage: mid_rounds.sh PEERS_DIR}
ringrun=$(cd "$(dirname "$0")/../.." && pwd)/target/release/ringrun
opts=(-b "${MINB:-256K}" -e "${MAXB:-8M}" -f 2 -w 5 -n 1000 --budget 0.4)
for r in $(seq "${ROUNDS:-3}"); do for n in ${NS:-4 8}; do
  echo "### round $r N=$n mpi"
  (cd "$peers" && timeout 300 mpirun --oversubscribe --allow-run-as-root -np "$n" \
    peers/.venv/bin/python peers/mpi_allreduce.py "${opts[@]}" --min-iters 3 2>/dev/null) |
    grep -aE "^ +[0-9]"
  for a in ${ALGOS:-ring hd}; do
    echo "### round $r N=$n $a"
    timeout 300 "$ringrun" bench --np "$n" --transport shm --algo "$a" "${opts[@]}" |
      grep -aE "^ +[0-9]"
  done
done; done
