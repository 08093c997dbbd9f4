"""Writing a text file so that readers never see half of it: write to a temporary name beside the
target, then rename (atomic on one file system). NIfTI files have their own writer in challenge.nifti."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def atomic_write(path: Path, write: Callable[[TextIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary text file beside ``path``, then rename it to ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. The folder must exist.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
