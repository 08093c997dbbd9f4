#!/usr/bin/env bash
# Download the wheels of requirements.txt into ./wheelhouse, for CPython 3.11 on manylinux x86_64 (the
# Python of the offline base image), so that `docker build --network none` needs no network. Run it once,
# on a machine with access to PyPI; it is idempotent (pip skips wheels that are there).
#   usage: bash wheelhouse.sh            env: PYTHON (default python3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/wheelhouse"
"${PYTHON:-python3}" -m pip download --quiet --dest "$here/wheelhouse" --only-binary=:all: --python-version 3.11 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 -r "$here/requirements.txt"
echo "wheelhouse: $(find "$here/wheelhouse" -name '*.whl' | wc -l) wheels in $here/wheelhouse"
