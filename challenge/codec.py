"""The deflate codec behind challenge.nifti's ``.nii.gz`` reading and writing: ISA-L (the ``isal`` package)
where it is importable, else Python's zlib. Both make and read the same standard gzip; on a 512x512x100
phantom CT, ISA-L inflates 2.1x and deflates (gzip level 1) 4x faster than zlib
(``benchmarks/codec_bench.py``, docs/experiments/codec.md).

- :func:`active` is the codec in use: ``FLARE_CODEC`` in the environment (``auto``, the default: isal if
  importable; ``isal``: the same, zlib where isal is missing; ``zlib``: zlib always), unless :func:`use`
  set one for this process. The environment is read at each call, so a test may set it.
- :meth:`Codec.inflater` is a streaming gzip decompressor with zlib's interface (``decompress(data,
  max_length)``, ``unconsumed_tail``, ``unused_data``, ``eof``; one gzip member, CRC and length checked at its
  end); :meth:`Codec.deflater` a compressor writing one gzip member (no name, mtime 0).
- Levels are gzip levels 0..9 (zlib's scale), mapped to the codec's own by :meth:`Codec.native_level`; 0 is
  stored blocks (no compression), written by zlib whatever the codec.

The reader treats zlib's verdict on a damaged stream as the reference (challenge.nifti replays a stream with
zlib when ISA-L reports an error or an unfinished member), so error messages do not depend on the codec.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast

GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip container, 32 KiB window
ENV = "FLARE_CODEC"
CHOICES = ("auto", "isal", "zlib")


class Decompressor(Protocol):
    """zlib's ``Decompress`` interface, as the reader uses it."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes: ...


class Compressor(Protocol):
    """zlib's ``Compress`` interface, as the writer uses it."""

    def compress(self, data: Any, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class Codec:
    """One deflate implementation with zlib's streaming interface."""

    name: str
    inflater: Callable[[], Decompressor]  # a fresh decompressor of one gzip member
    _deflater: Callable[[int], Compressor]  # native level -> a compressor writing one gzip member
    error: type[Exception]  # what ``decompress`` raises on corrupt data
    native_levels: tuple[int, ...]  # gzip levels 1..9 -> this codec's own level

    def native_level(self, level: int) -> int:
        """The codec's own level for gzip level ``level`` (1..9)."""
        if not 1 <= level <= 9:
            raise ValueError(f"gzip level must be 1..9 here, got {level}")
        return self.native_levels[level - 1]

    def deflater(self, level: int) -> Compressor:
        """A compressor of one gzip member at gzip level ``level`` (0..9, zlib's scale; 0: stored blocks)."""
        if level == 0:
            return zlib.compressobj(0, zlib.DEFLATED, GZIP_WBITS)
        return self._deflater(self.native_level(level))


def _zlib_codec() -> Codec:
    return Codec("zlib", lambda: zlib.decompressobj(wbits=GZIP_WBITS),
                 lambda level: zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS), zlib.error,
                 (1, 2, 3, 4, 5, 6, 7, 8, 9))


def _isal_codec() -> Codec | None:
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    # ISA-L has levels 0..3 (benchmarks/codec_bench.py, docs/experiments/codec.md, 512x512x100 phantom):
    # gzip level 1, the writers' default -> ISA-L 1: CT deflates 4x faster than zlib 1 into a file 4 % larger,
    # a label map 9x faster and 32 % smaller. ISA-L 0 is no faster and 17 % larger on CT. Levels 2..9 ->
    # ISA-L 2: CT 3 % smaller than ISA-L 1 for 3-12 % more time, label maps the same. ISA-L 3 is not used:
    # faster than 1 and 3 % smaller on phantom CT, but 8x slower and 50 % larger on label maps.
    return Codec("isal", lambda: isal_zlib.decompressobj(wbits=GZIP_WBITS),
                 lambda level: isal_zlib.compressobj(level, isal_zlib.DEFLATED, GZIP_WBITS),
                 cast(type[Exception], isal_zlib.error),
                 (1, 2, 2, 2, 2, 2, 2, 2, 2))


ZLIB = _zlib_codec()
ISAL = _isal_codec()  # None where the isal package is not installed
_forced: Codec | None = None


def available() -> dict[str, Codec]:
    """The codecs importable here, by name."""
    return {codec.name: codec for codec in (ISAL, ZLIB) if codec is not None}


def by_name(name: str) -> Codec:
    """``auto``/``isal`` (isal, zlib where it is missing) or ``zlib``; ValueError for another name."""
    if name not in CHOICES:
        raise ValueError(f"{ENV}={name!r}: expected one of {', '.join(CHOICES)}")
    return ZLIB if name == "zlib" or ISAL is None else ISAL


def active() -> Codec:
    """The codec in use: :func:`use`'s, else ``FLARE_CODEC``'s (default ``auto``)."""
    if _forced is not None:
        return _forced
    return by_name(os.environ.get(ENV, "auto").strip().lower() or "auto")


def use(name: str | None) -> None:
    """Force a codec for this process (a name as :func:`by_name` takes it; ``None``: back to ``FLARE_CODEC``)."""
    global _forced
    _forced = None if name is None else by_name(name)


@contextmanager
def using(name: str) -> Iterator[Codec]:
    """:func:`use` ``name`` inside a ``with`` block, then the codec forced before (or none) again."""
    global _forced
    previous = _forced
    _forced = by_name(name)
    try:
        yield _forced
    finally:
        _forced = previous
