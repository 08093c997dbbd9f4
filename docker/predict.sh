#!/bin/sh
# FLARE22 entry point, run as `sh predict.sh` from /workspace (POSIX sh, not bash).
# Segments /workspace/inputs/<Case>_0000.nii.gz -> /workspace/outputs/<Case>.nii.gz; uses the GPU when
# one is visible (never touches CUDA_VISIBLE_DEVICES), else the CPU. Exit 1 if any case failed.
# FLARE_THREADS caps CPU threads (the CPU-time AUC counts): default min(nproc, 4).
set -eu
if [ -z "${FLARE_THREADS:-}" ]; then
  n=$(nproc 2>/dev/null || echo 4)
  FLARE_THREADS=$(( n < 4 ? n : 4 ))
fi
export OMP_NUM_THREADS="$FLARE_THREADS" MKL_NUM_THREADS="$FLARE_THREADS" OPENBLAS_NUM_THREADS="$FLARE_THREADS"
export FLARE_THREADS
mkdir -p /workspace/outputs
exec python3 -m predictor -i /workspace/inputs -o /workspace/outputs --device "${FLARE_DEVICE:-auto}"
