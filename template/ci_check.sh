#!/usr/bin/env bash
# A team's CI gate (docs/ci.md shows it in GitHub Actions and GitLab CI; the harness's own CI runs it on this
# template): build the submission image offline, make a few sample cases, and check the image exactly as the
# organizers will run it. Exit 0 only when every case passes; a JUnit report is written for the CI's test view.
#   usage: template/ci_check.sh [CONTEXT_DIR] [OUT_DIR]
#          CONTEXT_DIR: the image's build folder (default: this template); OUT_DIR (default out/ci-check)
#          env: IMAGE (default flare-template:ci), BASE_IMAGE (default flare-base:bookworm), PYTHON, CASES (3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
CONTEXT=$(cd "${1:-$here}" && pwd)
OUT=${2:-out/ci-check}
IMAGE=${IMAGE:-flare-template:ci}
BASE_IMAGE=${BASE_IMAGE:-flare-base:bookworm}
PY=${PYTHON:-python3}
DOCKER=/usr/bin/docker

start=$SECONDS
[ -x "$CONTEXT/wheelhouse.sh" ] || [ -f "$CONTEXT/wheelhouse.sh" ] && bash "$CONTEXT/wheelhouse.sh"
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  bash "$repo/docker/base/build.sh" "$BASE_IMAGE"
fi
DOCKER_BUILDKIT=1 "$DOCKER" build --network none -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" "$CONTEXT" >/dev/null
echo "ci_check: built $IMAGE in $(( SECONDS - start )) s"
rm -rf "$OUT"
"$PY" -m phantoms --out "$OUT/samples" --count "${CASES:-3}" --seed 7 --shape 96 96 40 -q
"$PY" -m organizer check --image "$IMAGE" --images "$OUT/samples/images" --labels "$OUT/samples/labels" \
  --out "$OUT/results" --junit "$OUT/report.xml" --timeout 300 --memory 4g --shm-size 1g
