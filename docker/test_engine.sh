#!/usr/bin/env bash
# A second, disposable Docker engine for the hostile tests (host faults: the engine killed mid-run),
# never the shared one on /var/run/docker.sock.
#   usage: docker/test_engine.sh start DIR   start it; print its DOCKER_HOST (unix://DIR/docker.sock)
#          docker/test_engine.sh kill DIR    SIGKILL its dockerd only: the engine is gone, its socket refuses
#          docker/test_engine.sh stop DIR    kill everything start started (dockerd, its containerd, shims,
#                                            container processes), unmount what is left under DIR, delete
#                                            the netns and cgroups; safe twice and after kill (DIR is kept)
#          docker/test_engine.sh check       exit 0 if start can work here (root, tools, ip netns), else say why
# Isolation (ID = the first 8 hex digits of sha256(DIR), so kill/stop need no state beyond DIR):
#   - state: --data-root DIR/data, --exec-root DIR/exec, --pidfile DIR/dockerd.pid, -H unix://DIR/docker.sock,
#     log DIR/dockerd.log, --config-file DIR/daemon.json (not /etc/docker/daemon.json), trust key DIR/key.json;
#   - network: its own netns flare-test-ID (ip netns add; joined with nsenter --net, because `ip netns exec`
#     remounts /sys and so hides /sys/fs/cgroup from dockerd), --bridge none --iptables=false --ip-forward=false
#     --ip-masq=false: no link, route or iptables rule of the host changes;
#   - mounts: a private mount namespace (unshare --mount --propagation slave) with a tmpfs over /run, so its
#     overlay/shm/netns mounts never reach the host's mount table and vanish with its last process, and the
#     paths dockerd and containerd hard-code (/run/containerd/containerd.sock, /run/containerd/s shim sockets,
#     /run/docker/plugins, /run/docker/libnetwork) are its own. Because /run/containerd/containerd.sock is
#     absent there, dockerd always starts its own managed containerd (DIR/exec/containerd/containerd.sock),
#     never the main engine's (/var/run/docker/containerd/...) nor a system one; containerd namespaces
#     flare-test-ID[-plugins] instead of moby; container cgroups under /flare-test-ID instead of /docker.
# After kill its containerd, shims and containers are left (as on a host whose dockerd crashed): stop before
# starting again; start after stop keeps DIR's images and (exited) containers. Containers get no network but lo,
# even with --network host (the engine's netns). The engine sees host mounts made before its start only.
# The first `ip netns add` on a host leaves /run/netns (a shared bind mount, as iproute2 makes it) for good.
# Needs: root, iproute2 (ip netns), util-linux (nsenter, unshare), docker.io (dockerd, containerd, runc, docker).
set -euo pipefail

DOCKER=/usr/bin/docker
WAIT_S=${TEST_ENGINE_WAIT_S:-60}

die() { echo "test_engine: $*" >&2; exit 1; }

usage() { sed -n '4,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
cmd=$1

check() {
  [ "$(id -u)" = 0 ] || { echo "test_engine: needs root (ip netns, mounts)" >&2; return 1; }
  local tool
  for tool in ip nsenter unshare dockerd containerd runc "$DOCKER"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "test_engine: $tool is missing" >&2; return 1; }
  done
  local probe="flare-test-probe-$$" err
  if ! err=$(ip netns add "$probe" 2>&1); then
    echo "test_engine: ip netns is not permitted here: $err" >&2
    return 1
  fi
  ip netns del "$probe"
}

if [ "$cmd" = check ]; then
  check
  exit
fi

[ $# -eq 2 ] || usage
DIR=$(realpath -m -- "$2")
case "$DIR" in
  *[[:space:]]*) die "DIR must not contain white space: $DIR" ;;
  /run|/run/*|/var/run|/var/run/*) die "DIR must not be under /run (hidden by the engine's own /run): $DIR" ;;
esac
ID=$(printf %s "$DIR" | sha256sum | cut -c1-8)
NS=flare-test-$ID
SOCK=$DIR/docker.sock
LONGEST=$DIR/exec/containerd/containerd-debug.sock  # the longest socket path (containerd allows 104 bytes)
[ ${#LONGEST} -le 104 ] || die "DIR is too long for containerd's sockets (${#LONGEST} > 104 bytes): $LONGEST"

# The pid of this DIR's dockerd if it is alive (its command line names DIR's socket), else nothing.
engine_pid() {
  local pid
  for pid in $(cat "$DIR/engine.pid" "$DIR/dockerd.pid" 2>/dev/null); do
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "dockerd .*unix://$SOCK"; then
      echo "$pid"
      return
    fi
  done
}

# Every process this DIR's engine runs: those in its netns (dockerd, containerd, shims), those in its
# cgroups (containers, which have a netns of their own), and its dockerd and containerd by pid file.
engine_pids() {
  {
    [ -e "/run/netns/$NS" ] && ip netns pids "$NS" 2>/dev/null
    find /sys/fs/cgroup -maxdepth 2 -type d -name "$NS" 2>/dev/null | while read -r cg; do
      find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
    engine_pid
    local pid
    pid=$(cat "$DIR/exec/containerd/containerd.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "containerd .*$DIR/"; then
      echo "$pid"
    fi
  } | sort -un
}

stop() {
  local pids="" _
  for _ in $(seq 1 100); do
    pids=$(engine_pids)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  [ -z "$pids" ] || die "processes of $NS survived SIGKILL: $pids"
  # The engine's mounts lived in its own mount namespace and went with its last process; anything under
  # DIR in ours (there should be none) is unmounted, deepest first.
  awk -v dir="$DIR" '$5 == dir || index($5, dir "/") == 1 {print $5}' /proc/self/mountinfo | sort -r \
    | while read -r mnt; do umount -l "$mnt" || true; done
  if [ -e "/run/netns/$NS" ]; then
    ip netns del "$NS"
  fi
  find /sys/fs/cgroup -maxdepth 2 -type d -name "$NS" 2>/dev/null | while read -r cg; do
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # Stale pid files would be taken for live daemons by the next start (a zombie or a reused pid answers kill -0).
  rm -f "$SOCK" "$DIR/engine.pid" "$DIR/dockerd.pid" "$DIR/exec/containerd/containerd.pid"
}

case "$cmd" in
  start)
    check
    [ -z "$(engine_pid)" ] || die "an engine already runs for $DIR (pid $(engine_pid))"
    [ ! -e "/run/netns/$NS" ] || die "netns $NS is left from an earlier start; run: $0 stop $DIR"
    mkdir -p "$DIR/data" "$DIR/exec"
    rm -f "$SOCK" "$DIR/exec/containerd/containerd.pid"
    # Not /etc/docker/daemon.json, nor /etc/docker/key.json (the engine ID would be the main engine's).
    printf '{"deprecated-key-path": "%s"}\n' "$DIR/key.json" >"$DIR/daemon.json"
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    # setsid + closed fds: the daemon must not inherit our stdout/stderr (a caller reading them would hang).
    # nsenter, unshare and sh all exec, so $! is dockerd's pid.
    setsid nsenter --net="/run/netns/$NS" -- unshare --mount --propagation slave -- \
      /bin/sh -c 'mount -t tmpfs -o mode=0755,size=16m flare-test-run /run && exec "$@"' sh \
      dockerd --config-file "$DIR/daemon.json" --data-root "$DIR/data" --exec-root "$DIR/exec" \
        --pidfile "$DIR/dockerd.pid" -H "unix://$SOCK" \
        --containerd-namespace "$NS" --containerd-plugins-namespace "$NS-plugins" \
        --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent "/$NS" \
        --bridge none --iptables=false --ip-forward=false --ip-masq=false --userland-proxy=false \
      >"$DIR/dockerd.log" 2>&1 </dev/null &
    echo $! >"$DIR/engine.pid"
    for _ in $(seq 1 $((WAIT_S * 10))); do
      if "$DOCKER" -H "unix://$SOCK" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
        echo "unix://$SOCK"
        exit 0
      fi
      [ -n "$(engine_pid)" ] || break
      sleep 0.1
    done
    echo "test_engine: dockerd did not answer on $SOCK within ${WAIT_S}s (or died); last log lines:" >&2
    tail -n 20 "$DIR/dockerd.log" >&2 || true
    stop
    exit 1
    ;;
  kill)
    pid=$(engine_pid)
    if [ -z "$pid" ]; then
      echo "test_engine: no dockerd runs for $DIR" >&2
      exit 0
    fi
    kill -KILL "$pid"
    for _ in $(seq 1 50); do
      [ -d "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || exit 0
      sleep 0.1
    done
    die "dockerd $pid is still there 5 s after SIGKILL"
    ;;
  stop)
    stop
    ;;
  *)
    usage
    ;;
esac
