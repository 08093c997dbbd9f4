"""NIfTI reading and writing with the geometry kept, in one place (SimpleITK).

Axis conventions, fixed here for the whole project:
- Arrays in memory are numpy-from-SimpleITK order ``(k, j, i)``: axis 0 is the NIfTI's
  third voxel axis (the slice axis), axis 2 its first.
- :class:`Geometry` stores ``size``, ``spacing`` (mm) and ``origin`` (mm) in SimpleITK /
  NIfTI voxel order ``(i, j, k)``, and ``direction`` as SimpleITK's row-major 3x3 matrix.
  World coordinates are SimpleITK's LPS (DICOM) frame, in mm.
Writers go through challenge.files (a temporary name beside the target, then rename): no half-written
file is left.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from challenge.files import atomic_path, atomic_write_binary

GRID_TOLERANCE = 1e-3  # mm for spacing and origin; unitless for direction cosines


class NiftiError(ValueError):
    """A file that is not a readable 3D NIfTI image; the message names the file."""


@dataclass(frozen=True)
class Geometry:
    """A voxel grid. size/spacing/origin are (i, j, k); direction is row-major 3x3, LPS world."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()),
                   tuple(image.GetOrigin()), tuple(image.GetDirection()))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape in (k, j, i) order."""
        return self.size[::-1]

    @property
    def spacing_kji(self) -> tuple[float, float, float]:
        """Spacing (mm) in array order (k, j, i), as distance transforms on the array need it."""
        return self.spacing[::-1]

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) continuous voxel indices in (i, j, k) order -> (N, 3) LPS world points in mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.matrix.T

    def mismatch(self, other: Geometry, tol: float = GRID_TOLERANCE) -> str | None:
        """A short reason why ``other`` is not the same grid, or None if it is."""
        if self.size != other.size:
            return f"size {other.size} != {self.size}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if np.max(np.abs(a - b)) > tol:
                return f"{name} {tuple(np.round(b, 4))} != {tuple(np.round(a, 4))}"
        return None

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def read_image(path: str | Path, dtype: type | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 3D NIfTI. Returns the array in (k, j, i) order and its geometry.

    Raises NiftiError naming the file for a missing, empty, truncated or corrupt file,
    a non-NIfTI file, or an image that is not 3D with one component.
    """
    path = Path(path)
    if not path.is_file():
        raise NiftiError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise NiftiError(f"{path}: empty file")
    check_gzip_complete(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("NiftiImageIO")
        reader.SetFileName(str(path))
        image = reader.Execute()
    except RuntimeError as err:
        raise NiftiError(f"{path}: not a readable NIfTI image ({_first_line(err)})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NiftiError(f"{path}: expected a 3D single-channel image, got {image.GetDimension()}D "
                         f"with {image.GetNumberOfComponentsPerPixel()} component(s)")
    array = sitk.GetArrayFromImage(image)
    if dtype is not None and array.dtype != dtype:
        array = array.astype(dtype)
    return array, Geometry.of(image)


def check_gzip_complete(path: Path, chunk: int = 1 << 20) -> None:
    """Raise NiftiError unless a ``.gz`` file is a complete, intact gzip stream.

    SimpleITK (ITK's NIfTI reader) reads a truncated ``.nii.gz`` without complaint, filling the
    missing voxels, so the whole stream is inflated here once (CRC and length checked by zlib).
    """
    if not path.name.endswith(".gz"):
        return
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        with path.open("rb") as handle:
            while data := handle.read(chunk):
                while data:
                    inflater.decompress(data, chunk)  # bounded output: memory stays small
                    if not inflater.eof:
                        data = inflater.unconsumed_tail
                    elif data := inflater.unused_data:  # another gzip member follows
                        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    except zlib.error as err:
        raise NiftiError(f"{path}: corrupt gzip data ({err})") from None
    if not inflater.eof:
        raise NiftiError(f"{path}: truncated (the gzip stream ends early)")


def read_geometry(path: str | Path) -> Geometry:
    """The grid of a NIfTI file from its header alone (fast)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise NiftiError(f"{path}: not a readable NIfTI header ({_first_line(err)})") from None
    return Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()),
                    tuple(reader.GetOrigin()), tuple(reader.GetDirection()))


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path, compression_level: int = 1) -> Path:
    """Write a (k, j, i) array on ``geometry`` to ``path`` atomically (challenge.files: temporary name, then
    rename; mode 0644, so containers running as any user can read it).

    ``compression_level`` is the gzip level for ``.nii.gz`` (1 is fast; CT noise leaves higher levels
    little to gain). Raises ValueError if the array's shape is not ``geometry.shape``.
    """
    path = Path(path)
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"{path}: array shape {array.shape} != grid shape {geometry.shape} (k, j, i)")
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    if not path.name.endswith(".gz"):
        with atomic_path(path, suffix=".nii") as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=False)
        return path
    # SimpleITK's NIfTI writer ignores its compression level, so gzip here at the level asked for.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", suffix=".raw.nii", dir=path.parent) as raw:
        sitk.WriteImage(image, raw.name, useCompression=False)  # a scratch file, removed on close
        atomic_write_binary(path, lambda handle: _gzip_file(Path(raw.name), handle, compression_level))
    return path


def _gzip_file(source: Path, handle: BinaryIO, level: int) -> None:
    """Deflate ``source`` into the open binary ``handle`` as one gzip member (no name, mtime 0)."""
    with open(source, "rb") as src, gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=level,
                                                  mtime=0) as packed:
        shutil.copyfileobj(src, packed, 1 << 22)


def write_label(labels: np.ndarray, geometry: Geometry, path: str | Path, compression_level: int = 1) -> Path:
    """Write a label map (stored as uint8) on exactly ``geometry``. See :func:`write_image`."""
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"{path}: label values outside 0..255")
        labels = labels.astype(np.uint8)
    return write_image(labels, geometry, path, compression_level)


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # SimpleITK errors start with a file:line location; the useful text is usually last.
    return lines[-1] if lines else type(err).__name__
