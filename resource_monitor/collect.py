"""Collect a case's prediction from the container's output folder, safely.

Only ``<Case>.nii.gz`` is taken. It must be a regular file (not a symlink, device, fifo or folder) no
larger than the cap. It is opened with O_NOFOLLOW relative to the output folder, so no path can lead
out of that folder, and copied through the one atomic writer (challenge.files).

What the team wrote wrongly is the case's result (``refused``); a failure to write the copy into the
results folder (a full disk) is the host's and propagates as OSError. Other names in the folder are
listed, at most ``listed`` of them, with the count of the rest.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from challenge.cases import label_name
from challenge.files import atomic_write_binary

CHUNK = 1 << 20


@dataclass
class Collected:
    path: Path | None  # the collected prediction, or None
    refused: str | None = None  # why the expected file was refused
    unexpected: list[str] = field(default_factory=list)  # other names found (ignored), at most `listed`
    unexpected_count: int = 0  # how many other names there were in all


class Refused(ValueError):
    """The team's file cannot be collected; the message says why."""


def _others(out_dir: Path, expected: str, listed: int) -> tuple[list[str], int]:
    names: list[str] = []
    count = 0
    with os.scandir(out_dir) as entries:
        for entry in entries:
            if entry.name == expected:
                continue
            count += 1
            if len(names) < listed:
                names.append(entry.name)
    return sorted(names), count


def collect_output(case: str, out_dir: Path, dest_dir: Path, cap_bytes: int, listed: int = 50) -> Collected:
    expected = label_name(case)
    unexpected, count = _others(out_dir, expected, listed)
    try:
        path = _copy(out_dir, expected, dest_dir, cap_bytes)
    except Refused as err:
        return Collected(None, str(err), unexpected, count)
    return Collected(path, None, unexpected, count)


def _copy(out_dir: Path, expected: str, dest_dir: Path, cap_bytes: int) -> Path | None:
    """The collected copy's path, None when there is no such file; Refused for a file the team got wrong."""
    try:
        info = os.lstat(out_dir / expected)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise Refused(f"{expected} is a symlink")
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"{expected} is not a regular file")
    if info.st_size > cap_bytes:
        raise Refused(f"{expected} is {info.st_size} bytes, over the cap of {cap_bytes}")
    dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        src_fd = os.open(expected, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as err:
        raise Refused(f"{expected} cannot be opened safely ({err.strerror})") from None
    finally:
        os.close(dir_fd)
    with os.fdopen(src_fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):  # swapped after lstat
            raise Refused(f"{expected} is not a regular file")
        return atomic_write_binary(dest_dir / expected, lambda dst: _copy_capped(src, dst, expected, cap_bytes))


def _copy_capped(src: BinaryIO, dst: BinaryIO, name: str, cap_bytes: int) -> None:
    copied = 0
    while True:
        try:
            chunk = src.read(CHUNK)
        except OSError as err:
            raise Refused(f"{name} cannot be read ({err.strerror})") from None
        if not chunk:
            return
        copied += len(chunk)
        if copied > cap_bytes:
            raise Refused(f"{name} grew over the cap of {cap_bytes} bytes")
        dst.write(chunk)  # an OSError here is the results disk's: it propagates
