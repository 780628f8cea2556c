#!/usr/bin/env bash
# Mid sizes (256 KiB - 8 MiB), interleaved rounds: Open MPI shm, then ringrun shm with each
# allreduce algorithm in $ALGOS, back to back, so that each round sees the same machine.
#   benches/compare/mid_rounds.sh PEERS_DIR > out.txt   (env: NS="4 8", ROUNDS=3, ALGOS="ring hd",
#                                                         MINB=256K, MAXB=8M)
#   python3 benches/compare/mid_table.py out.txt        (medians and ratios, Markdown)
# With SIZES="2M 4M ..." each run measures one size instead of the sweep MINB..MAXB: the two
# sides then alternate every few seconds, which matters where the machine's speed changes
# from one run to the next.
# Before every run and after the last, a "# probe handoff X GB/s" line records the machine's
# speed mode (handoff_probe.c); `mid_table.py OUT --mode fast` then compares runs bracketed by
# fast probes only. PROBE=0 leaves the probes out.
# PEERS_DIR holds peers/ as installed by ../shared/peers/install.sh.
set -u
peers=${1:?usage: mid_rounds.sh PEERS_DIR}
here=$(cd "$(dirname "$0")" && pwd)
ringrun=$here/../../target/release/ringrun
probe_bin=$(mktemp -d)/handoff_probe
if [ "${PROBE:-1}" = 1 ] && gcc -O2 -pthread "$here/handoff_probe.c" -o "$probe_bin"; then
  probe() { echo "# probe $("$probe_bin" 0.1)"; }
else
  probe() { :; }
fi
common=(-f 2 -w 5 -n 1000 --budget 0.4)
one_round() { # ROUND N MINB MAXB
  local opts=(-b "$3" -e "$4" "${common[@]}")
  probe
  echo "### round $1 N=$2 mpi"
  (cd "$peers" && timeout 300 mpirun --oversubscribe --allow-run-as-root -np "$2" \
    peers/.venv/bin/python peers/mpi_allreduce.py "${opts[@]}" --min-iters 3 2>/dev/null) |
    grep -aE "^ +[0-9]"
  for a in ${ALGOS:-ring hd}; do
    probe
    echo "### round $1 N=$2 $a"
    timeout 300 "$ringrun" bench --np "$2" --transport shm --algo "$a" "${opts[@]}" |
      grep -aE "^ +[0-9]"
  done
}
for r in $(seq "${ROUNDS:-3}"); do for n in ${NS:-4 8}; do
  if [ -n "${SIZES:-}" ]; then
    for s in $SIZES; do one_round "$r" "$n" "$s" "$s"; done
  else
    one_round "$r" "$n" "${MINB:-256K}" "${MAXB:-8M}"
  fi
done; done
probe
