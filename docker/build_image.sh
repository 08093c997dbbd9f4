#!/usr/bin/env bash
# Build the predictor image on this machine with no registry:
#   1. the engine must answer (docker/engine.sh starts it if not);
#   2. build the offline base (docker/base/build.sh) if BASE_IMAGE is that local tag and it is missing;
#   3. fill docker/wheelhouse/ (docker/wheelhouse.sh) unless SKIP_WHEELHOUSE=1 (then pip uses PyPI);
#   4. DOCKER_BUILDKIT=1 docker build of ./Dockerfile with --build-arg BASE_IMAGE, tagged IMAGE, with
#      --network none when the wheelhouse holds wheels (the build is then offline).
#   usage: docker/build_image.sh [IMAGE]     (default flare-predictor:latest; env BASE_IMAGE, TORCH_SPEC)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${1:-${IMAGE:-flare-predictor:latest}}
BASE_IMAGE=${BASE_IMAGE:-flare-base:bookworm}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
DOCKER=/usr/bin/docker

bash "$repo/docker/engine.sh" >/dev/null
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  case "$BASE_IMAGE" in
    flare-base:*) bash "$repo/docker/base/build.sh" "$BASE_IMAGE" ;;
    *) echo "build_image: base image $BASE_IMAGE is not here; pull it first (needs a registry)" >&2; exit 1 ;;
  esac
fi
if [ -z "${SKIP_WHEELHOUSE:-}" ]; then
  TORCH_SPEC="$TORCH_SPEC" bash "$repo/docker/wheelhouse.sh"
fi
if [ ! -f "$repo/predictor/weights/config.json" ]; then
  echo "build_image: predictor/weights/config.json is missing (train with python -m predictor.train)" >&2
  exit 1
fi

# With wheels in the wheelhouse the build needs no network (pip --no-index): build with --network none,
# which also works on a host without a docker0 bridge. Without wheels pip needs PyPI: default network.
network=()
if compgen -G "$repo/docker/wheelhouse/*.whl" >/dev/null; then
  network=(--network none)
fi
start=$(date +%s)
DOCKER_BUILDKIT=1 "$DOCKER" build "${network[@]}" --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --build-arg TORCH_SPEC="$TORCH_SPEC" -t "$IMAGE" "$repo"
size=$("$DOCKER" image inspect "$IMAGE" --format '{{.Size}}')
echo "build_image: built $IMAGE from $BASE_IMAGE in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
