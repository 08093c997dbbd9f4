#!/usr/bin/env bash
# Save a team's image as a FLARE-style submission: TEAM.tar.gz (in the current folder) holding exactly one
# image tagged TEAM:latest, via docker save | gzip. It never ships the wrong image:
#   - with IMAGE, that image is tagged TEAM:latest and saved; if TEAM:latest already exists and is another
#     image, it refuses (one line, exit 1) unless FORCE=1;
#   - without IMAGE, TEAM:latest itself is saved if it exists, and otherwise it refuses.
# It prints the image ID and size it saved. The team name follows the one rule of challenge/teams.py.
#   usage: docker/save_submission.sh TEAM [IMAGE]       env: FORCE=1, PYTHON
#   (make submission TEAM=name [IMAGE=image] [FORCE=1])
#   then:  python -m organizer check --archive TEAM.tar.gz --images <sample cases>
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
TEAM=${1:?usage: docker/save_submission.sh TEAM [IMAGE]}
IMAGE=${2:-}
DOCKER=/usr/bin/docker
fail() { echo "save_submission: $*" >&2; exit 1; }

# The one team-name rule (challenge/teams.py): lower case, a Docker name component, at most 64 characters.
team=$(PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m challenge.teams "$TEAM") || exit 2
target="$team:latest"
id_of() { "$DOCKER" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

bash "$repo/docker/engine.sh" >/dev/null
current=$(id_of "$target")
if [ -n "$IMAGE" ]; then
  source=$(id_of "$IMAGE")
  [ -n "$source" ] || fail "IMAGE $IMAGE: no such image (build it first)"
  if [ -n "$current" ] && [ "$current" != "$source" ] && [ -z "${FORCE:-}" ]; then
    fail "$target already exists and is another image ($current, not $IMAGE = $source); FORCE=1 retags it"
  fi
  "$DOCKER" tag "$IMAGE" "$target"
elif [ -z "$current" ]; then
  fail "no image $target: build it as $target, or give IMAGE=<your image> (make submission TEAM=$team IMAGE=...)"
fi
saved=$(id_of "$target")
out="$team.tar.gz"
tmp="$out.partial.$$"
trap 'rm -f "$tmp"' EXIT
"$DOCKER" save "$target" | gzip -1 > "$tmp"
mv "$tmp" "$out"
trap - EXIT
size=$("$DOCKER" image inspect --format '{{.Size}}' "$target")
echo "save_submission: wrote $out ($(du -h "$out" | cut -f1)) holding $target = image $saved ($(( size / 1000000 )) MB)"
