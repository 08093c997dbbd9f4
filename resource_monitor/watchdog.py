"""Deadlines that hold when the monitor itself dies.

The monitor kills a case at its ``--timeout``. If the monitor is killed (SIGKILL, a crash, the machine's
OOM killer), nothing would stop its container or process group. So every monitored run starts one small
helper process, the watchdog, before its first case (its start-up never overlaps a measured case). While
the monitor lives, the watchdog only blocks on a pipe from it: no polling, no CPU. The monitor tells it,
one line each, what runs and until when::

    container <id> <deadline, seconds since the epoch>
    group <process group id> <deadline>
    folder <path>                        a temporary folder to remove once nothing runs
    done <id or group id>                that one ended normally
    bye                                  the monitor is exiting cleanly

When the pipe closes without ``bye`` (the monitor died), the watchdog enforces every deadline still open:
it kills and removes each container (or the process group) at its deadline, or removes it as soon as it
has exited, then removes the temporary folders, and exits. ``python -m resource_monitor.watchdog`` is the
process; :class:`Watchdog` is the monitor's side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

POLL_S = 2.0  # orphan mode: how often a container that exited by itself is looked for


@dataclass
class Open:
    """What the watchdog would have to stop if the monitor died now."""

    containers: dict[str, float] = field(default_factory=dict)  # id -> deadline (epoch s)
    groups: dict[int, float] = field(default_factory=dict)  # process group -> deadline
    folders: list[str] = field(default_factory=list)

    def apply(self, line: str) -> bool:
        """Apply one line of the protocol; False on ``bye``."""
        verb, _, rest = line.strip().partition(" ")
        if verb == "bye":
            return False
        if verb == "container":
            ident, deadline = rest.split()
            self.containers[ident] = float(deadline)
        elif verb == "group":
            pgid, deadline = rest.split()
            self.groups[int(pgid)] = float(deadline)
        elif verb == "folder":
            self.folders.append(rest)
        elif verb == "done":
            self.containers.pop(rest, None)
            if rest.isdigit():
                self.groups.pop(int(rest), None)
        return True


class Watchdog:
    """The monitor's side of the watchdog process (see the module docstring)."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        assert process.stdin is not None
        self._pipe: IO[str] = process.stdin
        self._closed = False

    @classmethod
    def start(cls) -> Watchdog:
        """Start the watchdog in its own session (Ctrl-C of the monitor's terminal does not reach it) and
        wait until it is ready, so that its start-up is over before any case is measured."""
        process = subprocess.Popen([sys.executable, "-m", "resource_monitor.watchdog"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   start_new_session=True, env=os.environ.copy())
        assert process.stdout is not None
        process.stdout.readline()  # "ready"
        return cls(process)

    def _send(self, line: str) -> None:
        with contextlib.suppress(OSError):  # a dead watchdog must not fail a case
            self._pipe.write(line + "\n")
            self._pipe.flush()

    def container(self, ident: str, deadline: float) -> None:
        self._send(f"container {ident} {deadline:.3f}")

    def group(self, pgid: int, deadline: float) -> None:
        self._send(f"group {pgid} {deadline:.3f}")

    def folder(self, path: Path) -> None:
        self._send(f"folder {path}")

    def done(self, ident: str | int) -> None:
        self._send(f"done {ident}")

    def close(self, clean: bool = True) -> None:
        """``clean``: the monitor is exiting normally and nothing of its run is left running. Only the first
        call counts."""
        if self._closed:
            return
        self._closed = True
        if clean:
            self._send("bye")
        with contextlib.suppress(OSError):
            self._pipe.close()
        if clean:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)


def _docker_client():
    try:
        import docker

        return docker.from_env(timeout=30)
    except Exception:  # noqa: BLE001 - no engine: nothing of Docker's to stop
        return None


def _container_gone(client, ident: str, deadline: float) -> bool:
    """Kill and remove the container at its deadline, or remove it once it has exited; True when gone."""
    import docker

    try:
        container = client.containers.get(ident)
        if container.status == "running" and time.time() < deadline:
            return False
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except Exception:  # noqa: BLE001 - the engine is gone too: its containers died with it
        return time.time() >= deadline + 60
    return True


def _group_gone(pgid: int, deadline: float) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    if time.time() < deadline:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def enforce(open_: Open) -> None:
    """Orphan mode: stop everything still open at its deadline, then remove the temporary folders."""
    client = _docker_client() if open_.containers else None
    while open_.containers or open_.groups:
        for ident, deadline in list(open_.containers.items()):
            if client is None or _container_gone(client, ident, deadline):
                del open_.containers[ident]
        for pgid, deadline in list(open_.groups.items()):
            if _group_gone(pgid, deadline):
                del open_.groups[pgid]
        if open_.containers or open_.groups:
            time.sleep(POLL_S)
    for folder in open_.folders:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe tells it to stop
    open_ = Open()
    print("ready", flush=True)
    for line in sys.stdin:
        if not open_.apply(line):
            return 0
    enforce(open_)  # the pipe closed without "bye": the monitor died
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
