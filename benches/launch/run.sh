#!/bin/sh
# Launch-to-first-allreduce, torchrun beside `ringrun launch` given the same torchrun command
# line (benches/launch/first_allreduce.py: init + one allreduce of a torch CPU tensor; gloo
# under torchrun, ringrun under ringrun). ROUNDS alternating rounds (default 7) of NPROC
# workers (default 2); prints each round and the medians (ms from the launch command).
#
#   benches/launch/run.sh                      # from the repository root, after
#   cargo build --release -p ringrun-launcher -p ringrun-ffi
#
# PYENV: the virtual environment holding torch and torchrun (default target/pyenv); its bin/
# goes first on PATH, so both launchers run the same python3.
set -eu
ROUNDS=${ROUNDS:-7}
NPROC=${NPROC:-2}
PYENV=${PYENV:-$PWD/target/pyenv}
RINGRUN=${RINGRUN:-$PWD/target/release/ringrun}
export RINGRUN_LIB=${RINGRUN_LIB:-$PWD/target/release/libringrun.so}
export PYTHONPATH=$PWD/python
export PATH=$PYENV/bin:$PATH
SCRIPT=$PWD/benches/launch/first_allreduce.py
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for i in $(seq "$ROUNDS"); do
    for launcher in torchrun ringrun; do
        case $launcher in
            torchrun) set -- torchrun ;;
            ringrun) set -- "$RINGRUN" launch ;;
        esac
        line=$(timeout 120 "$@" --standalone --nproc-per-node "$NPROC" "$SCRIPT" \
            "$(date +%s.%N)" 2>/dev/null | grep first_allreduce)
        echo "round $i $launcher: $line"
        echo "$launcher $line" >>"$OUT"
    done
done
python3 - "$OUT" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    w = line.split()
    # launcher, [tag] first_allreduce backend started S imported I joined J done D
    vals = dict(zip(w[-8::2], map(float, w[-7::2])))
    rows.setdefault(w[0], []).append(vals)
for launcher, rs in rows.items():
    med = lambda f: statistics.median(f(r) for r in rs)
    print(f"median {launcher} ({len(rs)} runs): launch -> worker started "
          f"{med(lambda r: r['started']):.0f} ms, import torch "
          f"{med(lambda r: r['imported'] - r['started']):.0f} ms, init + first allreduce "
          f"{med(lambda r: r['done'] - r['imported']):.0f} ms; launch -> first allreduce done "
          f"{med(lambda r: r['done']):.0f} ms")
PY
