#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine (idempotent).
#   1. install Debian's docker.io if dockerd is missing (needs root and apt);
#   2. start dockerd, detached, if no daemon answers;
#   3. wait until the API answers (or fail after DOCKER_WAIT_S seconds).
# Uses /usr/bin/docker, the engine's own client: a newer CLI earlier on PATH may lack buildx.
set -euo pipefail

DOCKER=/usr/bin/docker
WAIT_S=${DOCKER_WAIT_S:-60}
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}

answers() { "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if ! command -v dockerd >/dev/null 2>&1 || [ ! -x "$DOCKER" ]; then
  echo "engine.sh: installing docker.io (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

if answers; then
  echo "engine.sh: Docker engine $("$DOCKER" version --format '{{.Server.Version}}') is answering"
  exit 0
fi

echo "engine.sh: starting dockerd (log: $LOG)" >&2
# setsid + closed fds: the daemon must not inherit our stdout/stderr or any lock descriptor.
setsid dockerd >"$LOG" 2>&1 </dev/null &

for _ in $(seq 1 $((WAIT_S * 5))); do
  if answers; then
    echo "engine.sh: Docker engine $("$DOCKER" version --format '{{.Server.Version}}') is answering"
    exit 0
  fi
  sleep 0.2
done
echo "engine.sh: dockerd did not answer within ${WAIT_S}s; last log lines:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
