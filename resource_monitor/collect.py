"""Collect a case's prediction from the container's output folder, safely.

Only ``<Case>.nii.gz`` is taken. It must be a regular file (not a symlink, device, fifo or folder) no
larger than the cap. It is opened with O_NOFOLLOW relative to the output folder, so no path can lead
out of that folder, and copied through the one atomic writer (challenge.files).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from challenge.cases import label_name
from challenge.files import atomic_write_binary


@dataclass
class Collected:
    path: Path | None  # the collected prediction, or None
    refused: str | None = None  # why the expected file was refused
    unexpected: list[str] = field(default_factory=list)  # other names found (ignored)


def collect_output(case: str, out_dir: Path, dest_dir: Path, cap_bytes: int) -> Collected:
    expected = label_name(case)
    unexpected = sorted(e.name for e in os.scandir(out_dir) if e.name != expected)
    try:
        info = os.lstat(out_dir / expected)
    except FileNotFoundError:
        return Collected(None, None, unexpected)
    if stat.S_ISLNK(info.st_mode):
        return Collected(None, f"{expected} is a symlink", unexpected)
    if not stat.S_ISREG(info.st_mode):
        return Collected(None, f"{expected} is not a regular file", unexpected)
    if info.st_size > cap_bytes:
        return Collected(None, f"{expected} is {info.st_size} bytes, over the cap of {cap_bytes}", unexpected)
    dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        src_fd = os.open(expected, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as err:
        return Collected(None, f"{expected} cannot be opened safely ({err.strerror})", unexpected)
    finally:
        os.close(dir_fd)
    try:
        with os.fdopen(src_fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):  # swapped after lstat
                raise ValueError(f"{expected} is not a regular file")
            atomic_write_binary(dest_dir / expected, lambda dst: _copy_capped(src, dst, expected, cap_bytes))
    except (OSError, ValueError) as err:
        return Collected(None, str(err), unexpected)
    return Collected(dest_dir / expected, None, unexpected)


def _copy_capped(src: BinaryIO, dst: BinaryIO, name: str, cap_bytes: int) -> None:
    copied = 0
    while chunk := src.read(1 << 20):
        copied += len(chunk)
        if copied > cap_bytes:
            raise ValueError(f"{name} grew over the cap of {cap_bytes} bytes")
        dst.write(chunk)
