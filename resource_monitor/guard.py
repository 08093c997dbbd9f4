"""Disk limits while a case runs: what the target writes is measured every ``interval`` seconds and the
target is stopped at once when it goes over a cap, so a hostile image cannot fill the host's disk before
collection would have refused its output.

Two places are watched: the case's output folder (a host folder mounted at ``/workspace/outputs``), and,
for a container on an overlay-type storage driver, its writable layer (the ``UpperDir`` Docker reports:
everything it writes outside its mounts, ``/tmp`` included). Usage is counted in allocated blocks (a
sparse file costs what it really uses), without following links, and the number of entries is capped too
(a flood of empty files costs the host inodes and the monitor time).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20


@dataclass(frozen=True)
class DiskLimits:
    output_bytes: int = 1 << 30  # /workspace/outputs (the collection cap is the same)
    layer_bytes: int = 4 << 30  # the container's writable layer
    entries: int = 10_000  # files and folders, in each place


@dataclass(frozen=True)
class Usage:
    bytes: int
    entries: int


def usage(root: Path, stop_bytes: int, stop_entries: int) -> Usage:
    """Allocated bytes and entries under ``root`` (links not followed); counting stops once either stop
    value is passed, so a huge tree costs no more than the caps."""
    total, entries, stack = 0, 0, [str(root)]
    while stack and total <= stop_bytes and entries <= stop_entries:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    info = entry.stat(follow_symlinks=False)
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
                    if total > stop_bytes or entries > stop_entries:
                        break
        except OSError:  # removed meanwhile, or not readable: nothing to count there
            continue
    return Usage(total, entries)


class DiskGuard:
    """Watches ``places`` (name -> (folder, byte cap)) in a thread; calls ``breach(reason)`` once when one
    goes over its cap (the caller stops the target). Use as a context manager around the run."""

    def __init__(self, places: dict[str, tuple[Path, int]], entries: int, breach: Callable[[str], None],
                 interval_s: float = 0.5):
        self.places, self.entries, self.breach, self.interval_s = places, entries, breach, interval_s
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="disk-guard", daemon=True)

    def __enter__(self) -> DiskGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> str | None:
        """The first cap passed, as the case's error text, or None."""
        for name, (folder, cap) in self.places.items():
            used = usage(folder, cap, self.entries)
            if used.bytes > cap:
                return f"wrote more than {cap // MIB} MiB to {name}"
            if used.entries > self.entries:
                return f"wrote more than {self.entries} files to {name}"
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            reason = self.check()
            if reason:
                self.reason = reason
                self.breach(reason)
                return
