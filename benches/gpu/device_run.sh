#!/usr/bin/env bash
# GPU figures (NCCL, and the staged device path), on a machine with a GPU, from prebuilt
# binaries in $BIN (ringrun and the `gpu` test binary, built elsewhere with `--features nccl`).
# Writes logs to $OUT.
#   BIN=.dev OUT=/tmp/out STEPS="tests nccl staged" benches/gpu/device_run.sh
set -u
BIN=${BIN:-.dev}; OUT=${OUT:-/tmp/gpu-out}; STEPS=${STEPS:-"tests nccl staged"}
MAXB=${MAXB:-1G}; SMAXB=${SMAXB:-256M}
mkdir -p "$OUT"
nccl_lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], "lib"))' 2>/dev/null)
# cudarc loads libnccl.so only; the wheels ship libnccl.so.2.
links=$(mktemp -d); [ -n "$nccl_lib" ] && ln -s "$nccl_lib/libnccl.so.2" "$links/libnccl.so"
export LD_LIBRARY_PATH=$links${nccl_lib:+:$nccl_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi -L; nproc; echo "nccl lib: $nccl_lib"; ls "$nccl_lib" 2>/dev/null
here=$(cd "$(dirname "$0")" && pwd)
for step in $STEPS; do
  case $step in
    tests)
      timeout 300 "$BIN"/gpu --test-threads 1 --nocapture 2>&1 | tee "$OUT/tests.log" ;;
    nccl)   # one rank per GPU: ours and torch's NCCL, interleaved twice
      for i in 1 2; do
        timeout 240 "$BIN"/ringrun bench --device cuda --np 1 -b 8 -e "$MAXB" -n 50 -w 10 2>&1 | tee -a "$OUT/nccl-ours.log"
        timeout 240 python3 "$here/torch_allreduce.py" --backend nccl --np 1 -b 8 -e "$MAXB" -n 50 -w 10 2>&1 | tee -a "$OUT/nccl-torch.log"
      done ;;
    staged) # ranks sharing the GPU: our staged fallback beside Gloo on CUDA tensors, and our host path
      for np in 2 4; do
        timeout 240 "$BIN"/ringrun bench --device cuda --np $np -b 8 -e "$SMAXB" --budget 0.5 2>&1 | tee -a "$OUT/staged-ours.log"
        timeout 240 python3 "$here/torch_allreduce.py" --backend gloo --np $np -b 8 -e "$SMAXB" -n 20 -w 3 2>&1 | tee -a "$OUT/staged-gloo.log"
        timeout 240 "$BIN"/ringrun bench --np $np -b 8 -e "$SMAXB" --budget 0.5 2>&1 | tee -a "$OUT/host-ours.log"
      done ;;
  esac
done
