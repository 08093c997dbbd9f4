"""The one atomic writer: every file the harness writes (CSV, JSON, HTML, logs, figures, checkpoints,
NIfTI) goes to a temporary name beside its target and is renamed over it only once complete, so that a
reader, a crash, a full disk or Ctrl-C never leaves half a file under the final name.

- :func:`atomic_write` for text written through a handle (``json.dump``, ``DataFrame.to_csv``);
- :func:`atomic_write_text` and :func:`atomic_write_bytes` for a whole string or bytes;
- :func:`atomic_path` for libraries that want a path of their own (``torch.save``, ``Figure.savefig``,
  ``SimpleITK.WriteImage``): it yields the temporary path and renames it when the block ends cleanly.

Files are made readable by all (mode 0644): containers and report readers run as other users.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

FILE_MODE = 0o644


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit rename it to ``path`` (mode 0644).

    ``suffix`` keeps a file type that a library infers from the name (``.png``, ``.nii``). On any error,
    or when the block writes nothing, the temporary file is removed and ``path`` is left as it was. The
    parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[TextIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary UTF-8 text file beside ``path``, then rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        write(handle)
    return Path(path)


def atomic_write_binary(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, then rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write_binary(path, lambda handle: handle.write(data))


def read_bounded(path: str | Path, limit: int, flag: str) -> bytes:
    """The bytes of a small input file that someone else wrote (a profile, a cohort list), read whole but
    never more than ``limit`` bytes: ValueError, one line naming ``flag`` and the file, when it cannot be
    read or is larger."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot read ({err.strerror or type(err).__name__})") from None
    if len(data) > limit:
        raise ValueError(f"{flag} {path}: larger than {limit:,} bytes")
    return data
