#!/usr/bin/env bash
# Build the local offline base image with no registry: a minimal Debian root filesystem made by
# mmdebstrap (falling back to debootstrap), piped into `docker import`.
#   usage: docker/base/build.sh [TAG]        (default flare-base:bookworm; FORCE=1 rebuilds)
# The image holds Debian bookworm minbase + python3 (3.11, the same minor as the host, so host wheels
# install into it) + pip. Imported images have no PATH/CMD/WORKDIR: they are set with --change.
set -euo pipefail

TAG=${1:-${BASE_IMAGE:-flare-base:bookworm}}
SUITE=${SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-pip,python3-venv,ca-certificates,procps
DOCKER=/usr/bin/docker

if [ -z "${FORCE:-}" ] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "base: $TAG already exists (FORCE=1 rebuilds)"
  exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1 && ! command -v debootstrap >/dev/null 2>&1; then
  echo "base: installing mmdebstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null; }
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
if command -v mmdebstrap >/dev/null 2>&1; then
  # merged-usr hook avoids pulling in perl; skip=cleanup/apt keeps mmdebstrap off the host's apt cache.
  mmdebstrap --variant=minbase --include="$PACKAGES" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --skip=cleanup/apt \
    --customize-hook='chroot "$1" sh -c "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /usr/share/doc/* /usr/share/man/*"' \
    "$SUITE" "$work/rootfs.tar" "$MIRROR" >"$work/log" 2>&1 || { tail -n 30 "$work/log" >&2; exit 1; }
else
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" "$MIRROR" >"$work/log" 2>&1 \
    || { tail -n 30 "$work/log" >&2; exit 1; }
  rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/archives/"*.deb
  tar -C "$work/root" -cf "$work/rootfs.tar" .
fi

"$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
  --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
  --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
  --change 'WORKDIR /' \
  --change 'CMD ["/bin/bash"]' \
  --message "flare-harness offline base ($SUITE minbase + python3)" \
  "$work/rootfs.tar" "$TAG" >/dev/null
echo "base: built $TAG in $(( $(date +%s) - start )) s, $("$DOCKER" image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
