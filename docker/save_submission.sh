#!/usr/bin/env bash
# Save the predictor image as a FLARE-style submission: TEAM.tar.gz holding the tag team:latest
# (lower case, as `docker load` then `docker run team:latest` expects), via docker save | gzip.
#   usage: docker/save_submission.sh TEAM [IMAGE]    (IMAGE default flare-predictor:latest; built if missing)
#   then:  python -m resource_monitor run --archive TEAM.tar.gz --images <cases> --results out/selfcheck
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
TEAM=${1:?usage: docker/save_submission.sh TEAM [IMAGE]}
IMAGE=${2:-${IMAGE:-flare-predictor:latest}}
DOCKER=/usr/bin/docker
# The one team-name rule (challenge/teams.py): lower case, a Docker name component, at most 64 characters.
team=$(PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m challenge.teams "$TEAM") || exit 2

bash "$repo/docker/engine.sh" >/dev/null
if ! "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  bash "$repo/docker/build_image.sh" "$IMAGE"
fi
"$DOCKER" tag "$IMAGE" "$team:latest"
out="$TEAM.tar.gz"
tmp="$out.partial.$$"
trap 'rm -f "$tmp"' EXIT
"$DOCKER" save "$team:latest" | gzip -1 > "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "save_submission: wrote $out ($(du -h "$out" | cut -f1)) holding $team:latest"
