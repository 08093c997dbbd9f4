#!/usr/bin/env bash
# Fill docker/wheelhouse/ with the predictor image's wheels, downloaded by the HOST's pip, so that the
# image build needs no network and no CA inside the build (the Dockerfile bind-mounts this folder and
# installs with --no-index). Idempotent: pip skips wheels that are already there.
#   usage: docker/wheelhouse.sh            (TORCH_SPEC overrides the torch pin, e.g. TORCH_SPEC=torch==2.13.0+cpu)
# torch is pinned EXACTLY to the +cpu build: an unpinned torch makes pip prefer the multi-GB CUDA wheel.
# The wheels are for CPython 3.11 on manylinux x86_64, the Python of the offline base image.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dest="$here/wheelhouse"
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
PYTHON=${PYTHON:-python3}
mkdir -p "$dest"
"$PYTHON" -m pip download --quiet --dest "$dest" \
  --only-binary=:all: --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -r "$here/requirements-image.txt" "$TORCH_SPEC"
echo "wheelhouse: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
