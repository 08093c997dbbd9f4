#!/bin/sh
# FLARE22 entry point, run as `sh predict.sh` from /workspace (POSIX sh, not bash).
# Segments /workspace/inputs/<Case>_0000.nii.gz -> /workspace/outputs/<Case>.nii.gz; uses the GPU when
# one is visible (never touches CUDA_VISIBLE_DEVICES), else the CPU. Exit 1 if any case failed.
# FLARE_THREADS caps CPU threads (the CPU-time AUC counts): default min(nproc, 4).
# The image runs as the non-root user flare (uid 1000) unless `--user` says otherwise: a bind-mounted
# /workspace/outputs must be writable by that uid, else this exits 2 with one line saying so.
set -eu
out=/workspace/outputs
if [ -z "${FLARE_THREADS:-}" ]; then
  n=$(nproc 2>/dev/null || echo 4)
  FLARE_THREADS=$(( n < 4 ? n : 4 ))
fi
export OMP_NUM_THREADS="$FLARE_THREADS" MKL_NUM_THREADS="$FLARE_THREADS" OPENBLAS_NUM_THREADS="$FLARE_THREADS"
export FLARE_THREADS
# Nothing should write under HOME, but a library that caches must not fail on an unwritable one
# (`--user` with a uid that has no home, a read-only root filesystem): fall back to the temp folder.
if [ -z "${HOME:-}" ] || [ ! -d "$HOME" ] || [ ! -w "$HOME" ]; then
  export HOME="${TMPDIR:-/tmp}"
fi
# Check by writing, not by mode bits: a read-only mount, root squash or dropped capabilities all show.
# The write runs in a subshell: dash exits on a failed redirection of the special builtin `:`.
mkdir -p "$out" 2>/dev/null || true
probe="$out/.predict-write-test.$$"
if ! ( : > "$probe" ) 2>/dev/null; then
  echo "predict.sh: error: $out is not writable by the container's user (uid $(id -u), gid $(id -g)):" \
       "make the output folder writable for it (e.g. chmod 0777) or run with --user <owner uid>:<gid>" >&2
  exit 2
fi
rm -f "$probe"
exec python3 -m predictor -i /workspace/inputs -o "$out" --device "${FLARE_DEVICE:-auto}"
