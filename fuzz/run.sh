#!/usr/bin/env bash
# Builds the fuzz targets with AFL++ instrumentation (afl.rs, stable toolchain) and fuzzes
# each one, from the seeds `seeds` writes, for a number of executions or seconds:
#
#   fuzz/run.sh --execs 1000000            # every target, 10^6 inputs each
#   fuzz/run.sh --seconds 10 frame control # two targets, 10 s each (what CI runs, all targets)
#
# Needs cargo-afl (`cargo install cargo-afl`; .ci/run installs it under target/tools). Exits
# non-zero if any target found a crash or a hang; they are kept under target/fuzz-out/<target>.
# Per input: 1 s timeout, 512 MB of memory (a larger allocation aborts, and counts as a crash).
set -euo pipefail
cd "$(dirname "$0")"
limit=(-V 10)
case "${1:-}" in
  --execs) limit=(-E "$2"); shift 2 ;;
  --seconds) limit=(-V "$2"); shift 2 ;;
esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame membership control checkpoint shm_segment handshake)
export PATH="$PWD/../target/tools/bin:$PATH" CARGO_TARGET_DIR="$PWD/../target/fuzz"
# The workspace's lock file pins every dependency the targets share with it; cargo adds afl's.
cp ../Cargo.lock Cargo.lock
cargo afl build --release --quiet
bin="$CARGO_TARGET_DIR/release"
out="$PWD/../target/fuzz-out"
rm -rf "$out/seeds" && "$bin/seeds" "$out/seeds"
# A shared machine: no CPU pinning, no core-dump or frequency checks, no screen.
export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  AFL_NO_UI=1 AFL_SHUFFLE_QUEUE=1 AFL_QUIET=1
failed=0
for t in "${targets[@]}"; do
  rm -rf "${out:?}/$t"
  start=$(date +%s)
  cargo afl fuzz "${limit[@]}" -t 1000 -m 512 -i "$out/seeds/$t" -o "$out/$t" "$bin/$t" \
    > "$out/$t.log" 2>&1 || { echo "$t: afl-fuzz failed:"; tail -20 "$out/$t.log"; failed=1; continue; }
  stats="$out/$t/default/fuzzer_stats"
  get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  secs=$(( $(date +%s) - start ))
  printf '%-12s %10s inputs in %4ss (%s/s), %s paths, %s crashes, %s hangs\n' "$t" \
    "$(get execs_done)" "$secs" "$(get execs_per_sec)" "$(get corpus_count)" \
    "$(get saved_crashes)" "$(get saved_hangs)"
  if [ "$(get saved_crashes)" != 0 ] || [ "$(get saved_hangs)" != 0 ]; then failed=1; fi
done
exit $failed
