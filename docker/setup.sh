#!/usr/bin/env bash
# Everything the demo and the tests need, on a fresh Debian or Ubuntu machine, as root (`make setup`):
#   1. Debian packages: docker.io (the engine), mmdebstrap (the offline base image), chromium (the report test),
#      iproute2 (the fault tests' second engine lives in a network namespace of its own);
#   2. Python packages: CPU torch pinned exactly (never the multi-GB CUDA build), then the harness with its
#      test extras, editable;
#   3. a running Docker engine (docker/engine.sh) and the offline base image (docker/base/build.sh).
# Idempotent: what is there already is kept.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
BASE_IMAGE=${BASE_IMAGE:-flare-base:bookworm}
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)  # ip netns: the fault tests' second engine
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} (Debian packages)" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$PYTHON" -m pip install -q torch==2.13.0
"$PYTHON" -m pip install -q -e "$repo[test]"

bash "$repo/docker/engine.sh"
if ! /usr/bin/docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  bash "$repo/docker/base/build.sh" "$BASE_IMAGE"
fi
echo "setup: done (Python packages, Docker engine, $BASE_IMAGE, Chromium)"
