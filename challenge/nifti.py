"""NIfTI reading and writing with the geometry kept, in one place.

Axis conventions, fixed here for the whole project:
- Arrays in memory are numpy-from-SimpleITK order ``(k, j, i)``: axis 0 is the NIfTI's
  third voxel axis (the slice axis), axis 2 its first.
- :class:`Geometry` stores ``size``, ``spacing`` (mm) and ``origin`` (mm) in SimpleITK /
  NIfTI voxel order ``(i, j, k)``, and ``direction`` as SimpleITK's row-major 3x3 matrix.
  World coordinates are SimpleITK's LPS (DICOM) frame, in mm.

Reading is header first and bounded, for files from strangers: :func:`read_header` parses and checks the
NIfTI-1 header itself (``struct``, both byte orders, ``.nii`` and ``.nii.gz``, multi-member gzip included)
before anything else looks at the file; only then does SimpleITK read the header (``ReadImageInformation``)
for the geometry, and the data section is inflated once (challenge.codec: ISA-L where installed, else zlib;
in bounded pieces) straight into a buffer of exactly the declared size; a damaged gzip stream fails as zlib
sees it, whichever codec reads it (:class:`_Stream`). The arrays and geometry are bit for bit SimpleITK's
(``sitk.ReadImage`` + ``GetArrayFromImage`` + :meth:`Geometry.of`), as the tests check; what ITK does that
this module copies:

- ``dim[0]`` 4 to 7 whose extra dimensions are all 1 is a 3D image (ITK drops trailing dimensions of 1);
- ``scl_slope``/``scl_inter`` are float32 in the header, taken as double; NaN reads as 0 (nifti_clib);
  a slope within DBL_EPSILON of 0 means 1; data are rescaled when slope != 1 or intercept != 0 (beyond
  DBL_EPSILON): integer data become float32 as ``float32(double(float32(x)) * slope + intercept)``, float
  data keep their type as ``T(double(x) * slope + intercept)``;
- NaN and ±inf in float data read as 0 (nifti_clib), before the rescale.

Writers write what SimpleITK's ``WriteImage`` writes (:func:`nifti_header` builds its header bytes), deflated
by the same codec straight from the array, and go through challenge.files (a temporary name beside the
target, then rename): no half-written file is left.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, TypeVar

import numpy as np
import SimpleITK as sitk

from challenge import codec
from challenge.files import atomic_write_binary
from challenge.labels import MAX_LABEL

_T = TypeVar("_T")

GRID_TOLERANCE = 1e-3  # mm for spacing and origin; unitless for direction cosines
MAX_VOXELS = 512 * 512 * 2048
"""The most voxels a file read without a GT to compare it with may declare: 536,870,912 (512 x 512 x 2048,
1 GiB as int16). It bounds CT images for the predictor and GT label maps for the evaluator (both take
``--max-voxels N``); a prediction is bounded by its GT's shape instead."""
MAX_EXTENSION_BYTES = 16 << 20  # header extensions: vox_offset is at most 352 + 16 MiB
HEADER_BYTES = 348  # sizeof_hdr of NIfTI-1
MIN_VOX_OFFSET = 352  # the header and its 4-byte extension flag
READ_BYTES = 1 << 18  # compressed bytes read from the file at a time
INFLATE_BYTES = 1 << 20  # the most one inflate call returns
LABEL_CHUNK_VOXELS = 1 << 18  # voxels read_labels converts at a time
_CHUNK_VOXELS = 1 << 20  # voxels read_image rescales at a time
_EPS = float(np.finfo(np.float64).eps)  # NiftiImageIO's tolerance on slope and intercept

# NIfTI-1 datatype codes read, and their numpy types (byte order from the header).
DATATYPES: dict[int, str] = {2: "u1", 256: "i1", 4: "i2", 512: "u2", 8: "i4", 768: "u4", 1024: "i8", 1280: "u8",
                             16: "f4", 64: "f8"}
_REFUSED_TYPES = {0: "unknown", 1: "binary", 32: "complex64", 128: "RGB24", 1536: "float128", 1792: "complex128",
                  2048: "complex256", 2304: "RGBA32"}


class NiftiError(ValueError):
    """A file that is not a readable 3D NIfTI image; the message (one line) names the file."""


class ShapeError(NiftiError):
    """A header whose shape is not the one expected (:func:`read_labels`); raised before any data is read."""


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
        """A short reason why ``other`` is not the same grid (plain numbers), or None if it is. A NaN in
        either grid is a mismatch."""
        if tuple(self.size) != tuple(other.size):
            return f"size {_plain(other.size)} != {_plain(self.size)}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name), float), np.asarray(getattr(other, name), float)
            if not np.all(np.abs(a - b) <= tol):
                return f"{name} {_plain(b, 4)} != {_plain(a, 4)}"
        return None

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def _plain(values: object, digits: int | None = None) -> tuple:
    """A tuple of Python numbers (ints stay ints, floats rounded, -0.0 as 0.0), so that it prints without
    ``np.float64``."""
    items = np.asarray(values).ravel().tolist()
    return tuple(round(v, digits) + 0.0 if digits is not None and isinstance(v, float) else v for v in items)


# --- the header -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NiftiHeader:
    """What the checked NIfTI-1 header of one file declares (:func:`read_header`)."""

    path: Path
    shape: tuple[int, int, int]  # (k, j, i)
    stored: np.dtype  # the data section's type, in the file's byte order
    dtype: np.dtype  # what read_image returns (sitk.GetArrayFromImage's type): float32 for rescaled integers
    vox_offset: int  # where the data section starts, in the (inflated) file
    slope: float  # the rescale ITK applies (1.0 and 0.0 where it applies none)
    intercept: float
    compressed: bool  # gzip (one or more members)

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """The data section's exact size."""
        return self.voxels * self.stored.itemsize

    @property
    def rescaled(self) -> bool:
        return self.slope != 1.0 or self.intercept != 0.0

    def geometry(self) -> Geometry:
        """The grid, from SimpleITK's header read (``ReadImageInformation``: no data), so that it is bit for bit
        what ``sitk.ReadImage`` gives. Raises NiftiError if ITK cannot read the header or sees another size."""
        reader = sitk.ImageFileReader()
        reader.SetImageIO("NiftiImageIO")
        reader.SetFileName(str(self.path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise NiftiError(f"{self.path}: not a readable NIfTI header ({_first_line(err)})") from None
        size = tuple(reader.GetSize())
        if size != self.shape[::-1] or reader.GetNumberOfComponents() != 1:
            raise NiftiError(f"{self.path}: SimpleITK reads size {size} with {reader.GetNumberOfComponents()} "
                             f"component(s) where the header declares {self.shape[::-1]}")
        return Geometry(size, tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()))


def read_header(path: str | Path, max_voxels: int | None = None) -> NiftiHeader:
    """Parse and check the NIfTI-1 header of ``path`` (single-file ``.nii`` or ``.nii.gz``, either byte order),
    inflating only its first 348 bytes.

    Raises NiftiError, one line naming the file and the field, for: a missing or empty file; a broken gzip
    stream; ``sizeof_hdr`` not 348 or magic not ``n+1``; an image that is not 3D (``dim[0]`` 4..7 with
    extra dimensions of 1 is 3D, as in ITK); a dim < 1; a datatype not in :data:`DATATYPES` or a
    ``bitpix`` that disagrees; ``pixdim[1..3]`` not finite and > 0; ``vox_offset`` not a whole number in
    352 .. 352 + :data:`MAX_EXTENSION_BYTES`; an infinite ``scl_slope``/``scl_inter`` (NaN reads as 0, as in
    ITK; nibabel writes NaN for "no rescale"); more than ``max_voxels`` voxels, when given.
    """
    path = Path(path)
    if not path.is_file():
        raise NiftiError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise NiftiError(f"{path}: empty file")
    compressed = _is_gzip(path)
    with _Stream(path, compressed) as stream:
        raw = stream.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise NiftiError(f"{path}: not a NIfTI-1 file (header of {len(raw)} bytes, expected {HEADER_BYTES})")
    header = _parse(path, raw, compressed)
    if max_voxels is not None and header.voxels > max_voxels:
        raise NiftiError(f"{path}: {header.voxels} voxels declared (dim {header.shape[::-1]}), over the cap of "
                         f"{max_voxels} (--max-voxels)")
    return header


def _is_gzip(path: Path) -> bool:
    """A ``.gz`` name, or gzip's magic bytes (ITK reads a gzipped ``.nii`` too)."""
    if path.name.endswith(".gz"):
        return True
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _parse(path: Path, raw: bytes, compressed: bool) -> NiftiHeader:
    order = _byte_order(path, raw)
    magic = raw[344:348]
    if magic != b"n+1\0":
        what = "a two-file NIfTI (magic 'ni1'): only single-file" if magic == b"ni1\0" else f"magic {magic!r}: not a"
        raise NiftiError(f"{path}: {what} .nii/.nii.gz NIfTI-1")
    dim = struct.unpack_from(order + "8h", raw, 40)
    datatype, bitpix = struct.unpack_from(order + "2h", raw, 70)
    pixdim = struct.unpack_from(order + "8f", raw, 76)
    vox_offset, slope, intercept = struct.unpack_from(order + "3f", raw, 108)
    stored = _stored_type(path, datatype, bitpix).newbyteorder(order)
    _check_pixdim(path, pixdim)
    slope, intercept = _rescale_of(path, slope, intercept)
    dtype = stored.newbyteorder("=")
    if slope != 1.0 or intercept != 0.0:
        dtype = dtype if dtype.kind == "f" else np.dtype(np.float32)
    return NiftiHeader(path, _shape(path, dim), stored, dtype, _vox_offset(path, vox_offset), slope, intercept,
                       compressed)


def _byte_order(path: Path, raw: bytes) -> Literal["<", ">"]:
    orders: tuple[Literal["<", ">"], ...] = ("<", ">")
    for order in orders:
        if struct.unpack_from(order + "i", raw)[0] == HEADER_BYTES:
            return order
    size = struct.unpack_from("<i", raw)[0]
    what = "NIfTI-2 is not supported" if 540 in (size, struct.unpack_from(">i", raw)[0]) else "not a NIfTI-1 file"
    raise NiftiError(f"{path}: sizeof_hdr {size}: {what} (expected {HEADER_BYTES})")


def _shape(path: Path, dim: tuple[int, ...]) -> tuple[int, int, int]:
    """(k, j, i) from ``dim``; dimensions past the third must be 1, which ITK drops."""
    rank = dim[0]
    if not 1 <= rank <= 7:
        raise NiftiError(f"{path}: dim[0] = {rank}: not a NIfTI-1 dimension count (1..7)")
    sizes = dim[1:rank + 1]
    for n, size in enumerate(sizes, start=1):
        if size < 1:
            raise NiftiError(f"{path}: dim[{n}] = {size}: every dimension must be >= 1")
    while rank > 3 and dim[rank] == 1:
        rank -= 1
    if rank != 3:
        raise NiftiError(f"{path}: expected a 3D single-channel image, got {rank}D (dim {sizes})")
    return dim[3], dim[2], dim[1]


def _stored_type(path: Path, datatype: int, bitpix: int) -> np.dtype:
    if datatype not in DATATYPES:
        name = _REFUSED_TYPES.get(datatype, "not a NIfTI-1 type")
        raise NiftiError(f"{path}: datatype {datatype} ({name}) is not supported "
                         f"(one of uint8, int8, int16, uint16, int32, uint32, int64, uint64, float32, float64)")
    stored = np.dtype(DATATYPES[datatype])
    if bitpix != 8 * stored.itemsize:
        raise NiftiError(f"{path}: bitpix {bitpix} disagrees with datatype {datatype} ({stored.name}: "
                         f"{8 * stored.itemsize})")
    return stored


def _check_pixdim(path: Path, pixdim: tuple[float, ...]) -> None:
    for n in (1, 2, 3):
        if not (math.isfinite(pixdim[n]) and pixdim[n] > 0):
            raise NiftiError(f"{path}: pixdim[{n}] = {pixdim[n]}: voxel spacing must be finite and > 0")


def _vox_offset(path: Path, value: float) -> int:
    top = MIN_VOX_OFFSET + MAX_EXTENSION_BYTES
    if not (math.isfinite(value) and value == int(value) and MIN_VOX_OFFSET <= value <= top):
        raise NiftiError(f"{path}: vox_offset {value}: expected a whole number in {MIN_VOX_OFFSET}..{top} "
                         f"(at most {MAX_EXTENSION_BYTES >> 20} MiB of header extensions)")
    return int(value)


def _rescale_of(path: Path, slope: float, intercept: float) -> tuple[float, float]:
    """(slope, intercept) as ITK's NiftiImageIO applies them; (1.0, 0.0) when it applies none."""
    for name, value in (("scl_slope", slope), ("scl_inter", intercept)):
        if math.isinf(value):
            raise NiftiError(f"{path}: {name} {value}: must be finite")
    slope, intercept = (0.0 if math.isnan(slope) else slope), (0.0 if math.isnan(intercept) else intercept)
    if abs(slope) < _EPS:
        slope = 1.0
    if abs(slope - 1.0) <= _EPS and abs(intercept) <= _EPS:
        return 1.0, 0.0
    return slope, intercept


# --- the bytes of a file ----------------------------------------------------------------------------------

class _Stream:
    """The (inflated) bytes of a file, front to back, in bounded pieces. Gzip members follow one another;
    each member's CRC and length are checked by the codec when its end is read.

    The codec is challenge.codec's active one (ISA-L where installed). zlib's verdict on a damaged stream is
    the reference: where another codec reports corrupt data or a member that the file ends inside, the
    stream is read again from its start with zlib, the requests answered so far and then the one under way,
    so that the file fails (or reads) exactly as with zlib, with zlib's message."""

    def __init__(self, path: Path, compressed: bool) -> None:
        self.path = path
        self.compressed = compressed
        self._file = path.open("rb")
        self._codec = codec.active()
        self._inflater: codec.Decompressor | None = None  # None between members
        self._tail = b""  # compressed bytes read but not yet inflated
        self._answered: list[tuple[bool, int]] = []  # (a single piece?, bytes asked) by a codec other than zlib

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def piece(self, limit: int) -> bytes:
        """The next at most ``limit`` (> 0) bytes; empty only at the end of the file (of its last gzip member)."""
        if not self.compressed:
            return self._file.read(limit)
        return self._request(True, limit, lambda: self._piece(limit))

    def read(self, count: int) -> bytes:
        """Up to ``count`` bytes (fewer only at the end)."""
        if not self.compressed:
            return self._pulled(count)
        return self._request(False, count, lambda: self._pulled(count))

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` (bytes); returns how many bytes came (fewer than its length only at the end)."""
        if not self.compressed:
            got = 0
            while got < len(view) and (n := self._file.readinto(view[got:])):
                got += n
            return got

        def put(part: bytes, at: int) -> None:
            view[at:at + len(part)] = part
        return self._request(False, len(view), lambda: self._pull(len(view), put))

    def skip(self, count: int) -> int:
        """Move ``count`` bytes on; returns how many there were."""
        if not self.compressed:
            self._file.seek(count, 1)
            return count
        return self._request(False, count, lambda: self._pull(count, None))

    def _pulled(self, count: int) -> bytes:
        parts: list[bytes] = []
        self._pull(count, lambda part, at: parts.append(part))
        return b"".join(parts)

    def _pull(self, count: int, sink: Callable[[bytes, int], object] | None) -> int:
        """Pieces until ``count`` bytes came (fewer only at the end), each passed to ``sink(piece, offset)``."""
        got = 0
        while got < count and (part := self._piece(min(count - got, INFLATE_BYTES))):
            if sink is not None:
                sink(part, got)
            got += len(part)
        return got

    def _request(self, single: bool, count: int, run: Callable[[], _T]) -> _T:
        """``run()`` (one public request), replayed with zlib if another codec finds the stream damaged."""
        if self._codec.name == "zlib":
            return run()
        try:
            result = run()
        except NiftiError:  # corrupt or unfinished: zlib decides, from the start of the file
            self._replay_with_zlib()
            return run()
        self._answered.append((single, count))
        return result

    def _replay_with_zlib(self) -> None:
        """Switch to zlib and read again, from the file's start, what the requests answered so far read (the
        same requests, so zlib meets any damage exactly where it would have without the other codec)."""
        self._codec, self._inflater, self._tail = codec.ZLIB, None, b""
        self._file.seek(0)
        for single, count in self._answered:
            if single:
                self._piece(count)
            else:
                self._pull(count, None)
        self._answered = []

    def _piece(self, limit: int) -> bytes:
        if not self.compressed:
            return self._file.read(limit)
        while True:
            if not self._tail:
                self._tail = self._file.read(READ_BYTES)
                if not self._tail:
                    if self._inflater is not None:
                        raise NiftiError(f"{self.path}: truncated (the gzip stream ends early)")
                    return b""
            if self._inflater is None:
                self._inflater = self._codec.inflater()
            try:
                out = self._inflater.decompress(self._tail, limit)
            except self._codec.error as err:
                raise NiftiError(f"{self.path}: corrupt gzip data ({err})") from None
            if self._inflater.eof:  # a member ends (CRC checked); another may follow
                self._tail, self._inflater = self._inflater.unused_data, None
            else:
                self._tail = self._inflater.unconsumed_tail
            if out:
                return out


class _Data:
    """The data section of one file: exactly ``header.nbytes`` bytes, read once, front to back."""

    def __init__(self, header: NiftiHeader) -> None:
        self.header = header
        self.got = 0
        if not header.compressed:
            _check_plain_size(header)
        self._stream = _Stream(header.path, header.compressed)
        try:
            if self._stream.skip(header.vox_offset) < header.vox_offset:
                raise self._truncated()
        except BaseException:
            self._stream.close()
            raise

    def __enter__(self) -> _Data:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stream.close()

    def fill(self, view: memoryview) -> None:
        """The next ``len(view)`` bytes of the data section, or NiftiError (truncated data)."""
        got = self._stream.readinto(view)
        self.got += got
        if got < len(view):
            raise self._truncated()

    def finish(self) -> None:
        """Check that the data section was all read and nothing follows it (the gzip stream read to its end,
        CRCs checked)."""
        if self.got != self.header.nbytes:
            raise self._truncated()
        if self._stream.piece(INFLATE_BYTES):
            raise NiftiError(f"{self.header.path}: trailing data: more than the {self.header.nbytes} bytes the "
                             f"header declares")

    def _truncated(self) -> NiftiError:
        return NiftiError(f"{self.header.path}: truncated data: got {self.got} of {self.header.nbytes} bytes")


def _check_plain_size(header: NiftiHeader) -> None:
    """An uncompressed file is exactly vox_offset + nbytes long."""
    size, want = header.path.stat().st_size, header.vox_offset + header.nbytes
    if size < want:
        raise NiftiError(f"{header.path}: truncated data: got {max(0, size - header.vox_offset)} of "
                         f"{header.nbytes} bytes")
    if size > want:
        raise NiftiError(f"{header.path}: trailing data: {size - want} bytes after the {header.nbytes} bytes "
                         f"the header declares")


# --- arrays -----------------------------------------------------------------------------------------------

def read_image(path: str | Path, dtype: type | None = None,
               max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, Geometry]:
    """Read a 3D NIfTI. Returns the array in (k, j, i) order and its geometry, bit for bit what
    ``sitk.ReadImage`` + ``GetArrayFromImage`` + :meth:`Geometry.of` give (the module docstring says how).

    The header is checked first (:func:`read_header`, at most ``max_voxels`` voxels); the data section is
    then inflated once into a buffer of exactly the declared size, and SimpleITK reads the header for the
    geometry. Raises NiftiError, one line naming the file, for a bad header, a truncated or corrupt gzip
    stream, or a data section shorter or longer than the header declares.
    """
    header = read_header(path, max_voxels)
    buffer = np.empty(header.nbytes, np.uint8)
    with _Data(header) as data:
        data.fill(buffer.data)
        data.finish()
    geometry = header.geometry()  # after the data: a corrupt gzip stream is named as such, not as ITK sees it
    array = _as_itk(buffer.view(header.stored), header).reshape(header.shape)
    if dtype is not None and array.dtype != dtype:
        array = array.astype(dtype)
    return array, geometry


def _as_itk(values: np.ndarray, header: NiftiHeader) -> np.ndarray:
    """The flat data section as ITK reads it, in place where the type allows: native byte order, NaN and
    ±inf in float data set to 0, then the rescale (float32 for integer data)."""
    if not values.dtype.isnative:
        values = values.byteswap(inplace=True).view(values.dtype.newbyteorder("="))
    if values.dtype.kind == "f":
        for start in range(0, values.size, _CHUNK_VOXELS):
            part = values[start:start + _CHUNK_VOXELS]
            np.copyto(part, 0, where=~np.isfinite(part))
    if not header.rescaled:
        return values
    out = values if values.dtype == header.dtype else np.empty(values.shape, header.dtype)
    for start in range(0, values.size, _CHUNK_VOXELS):
        out[start:start + _CHUNK_VOXELS] = _rescaled(values[start:start + _CHUNK_VOXELS], header)
    return out


def _rescaled(values: np.ndarray, header: NiftiHeader) -> np.ndarray:
    """ITK's rescale of one piece: ``T(double(x) * slope + intercept)``, integers through float32 first."""
    wide = values.astype(np.float64 if values.dtype.kind == "f" else np.float32).astype(np.float64, copy=False)
    wide *= header.slope
    wide += header.intercept
    with np.errstate(over="ignore"):  # beyond float32's range: inf, as the C cast gives
        return wide.astype(header.dtype)


@dataclass(frozen=True)
class LabelIssues:
    """What turning a file's values into labels 0..13 changed (:func:`to_labels`, :func:`read_labels`)."""

    outside: int = 0  # voxels set to 0: outside 0..13 after truncation, NaN and ±inf included
    non_integer: int = 0  # finite values with a fractional part (truncated toward zero)
    non_finite: int = 0  # NaN and ±inf (counted in ``outside`` too)

    def __add__(self, other: LabelIssues) -> LabelIssues:
        return LabelIssues(self.outside + other.outside, self.non_integer + other.non_integer,
                           self.non_finite + other.non_finite)


def to_labels(values: np.ndarray, out: np.ndarray | None = None,
              max_label: int = MAX_LABEL) -> tuple[np.ndarray, LabelIssues]:
    """uint8 labels of a numeric array, as the official ``np.uint8(get_fdata())`` reads labels 0..13 (0..
    ``max_label``: a challenge profile's highest label): floats truncated toward zero; values outside 0..13,
    NaN and ±inf set to 0. Writes ``out`` (same shape, uint8; it may be ``values`` itself) or a new array;
    returns it with the counts of what changed."""
    out = np.empty(values.shape, np.uint8) if out is None else out
    if values.dtype.kind in "bui":
        inside = values <= max_label if values.dtype.kind in "bu" else (values >= 0) & (values <= max_label)
        outside = values.size - int(np.count_nonzero(inside))
        np.copyto(out, values, casting="unsafe")
        if outside:
            out[~inside] = 0
        return out, LabelIssues(outside)
    finite = np.isfinite(values)
    whole = np.trunc(values)
    fractional = whole != values
    fractional &= finite
    inside = (whole >= 0) & (whole <= max_label)  # NaN and ±inf are not
    whole[~inside] = 0
    np.copyto(out, whole, casting="unsafe")
    return out, LabelIssues(values.size - int(np.count_nonzero(inside)), int(np.count_nonzero(fractional)),
                            values.size - int(np.count_nonzero(finite)))


def read_labels(path: str | Path, expect: Geometry | tuple[int, int, int],
                chunk_voxels: int = LABEL_CHUNK_VOXELS, max_label: int = MAX_LABEL) -> tuple[np.ndarray, LabelIssues]:
    """Read a label map (a prediction) as a (k, j, i) uint8 array with :func:`to_labels`' semantics (labels
    0..``max_label``), and what that changed.

    The header must declare ``expect``'s shape ((k, j, i), or a Geometry's), else ShapeError before any data
    is inflated. The data are rescaled as ITK does (NaN and ±inf are kept, counted and set to 0) and
    converted ``chunk_voxels`` at a time, so that the memory used is the uint8 output plus a few buffers
    of ``chunk_voxels`` values, whatever the file's type. Other problems: NiftiError, as :func:`read_image`.
    """
    header = read_header(path)
    shape = expect.shape if isinstance(expect, Geometry) else tuple(expect)
    if header.shape != shape:
        raise ShapeError(f"{header.path}: shape {header.shape} != expected {shape} (k, j, i)")
    labels = np.empty(header.voxels, np.uint8)
    issues = LabelIssues()
    with _Data(header) as data:
        if header.stored.itemsize == 1 and header.stored.kind == "u" and not header.rescaled:
            data.fill(labels.data)  # uint8 already: read in place, check in pieces
            for start in range(0, labels.size, chunk_voxels):
                piece = labels[start:start + chunk_voxels]
                issues += to_labels(piece, piece, max_label)[1]
        else:
            staging = np.empty(min(chunk_voxels, labels.size) * header.stored.itemsize, np.uint8)
            for start in range(0, labels.size, chunk_voxels):
                part = staging[:min(chunk_voxels, labels.size - start) * header.stored.itemsize]
                data.fill(part.data)
                values = part.view(header.stored)
                values = _rescaled(values, header) if header.rescaled else values.astype(header.dtype, copy=False)
                issues += to_labels(values, labels[start:start + values.size], max_label)[1]
        data.finish()
    return labels.reshape(header.shape), issues


def read_geometry(path: str | Path) -> Geometry:
    """The grid of a NIfTI file from its header alone (fast): :func:`read_header`'s checks, then
    :meth:`NiftiHeader.geometry`."""
    return read_header(path).geometry()


def write_image(array: np.ndarray, geometry: Geometry, path: str | Path, compression_level: int = 1) -> Path:
    """Write a (k, j, i) array on ``geometry`` to ``path`` atomically (challenge.files: temporary name, then
    rename; mode 0644, so containers running as any user can read it).

    The file is what SimpleITK's ``WriteImage`` writes, byte for byte before compression: the NIfTI-1 header
    comes from :func:`nifti_header` (SimpleITK's bytes, computed here), then the data in little-endian
    order. ``.nii.gz`` is one gzip member deflated by challenge.codec's active codec (ISA-L where installed,
    else zlib) at gzip level ``compression_level`` (0..9, zlib's scale; 1, the default, is ISA-L's level 1:
    CT noise leaves higher levels little to gain), straight from the array: no uncompressed scratch file.
    Raises ValueError if the array's shape is not ``geometry.shape`` or a side is over 32767 (NIfTI-1's
    limit), TypeError for a type NIfTI-1 does not hold (:data:`DATATYPES`' types only).
    """
    path = Path(path)
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"{path}: array shape {array.shape} != grid shape {geometry.shape} (k, j, i)")
    stored = array.dtype.newbyteorder("<")
    if stored.str[1:] not in _CODE_OF:
        raise TypeError(f"{path}: dtype {array.dtype} cannot be written as NIfTI-1 (one of uint8, int8, int16, "
                        "uint16, int32, uint32, int64, uint64, float32, float64)")
    if not 0 <= compression_level <= 9:
        raise ValueError(f"{path}: compression_level must be 0..9, got {compression_level}")
    header = nifti_header(stored, geometry)
    data = np.ascontiguousarray(array, dtype=stored).data.cast("B")
    if path.name.endswith(".gz"):
        return atomic_write_binary(path, lambda handle: _deflate_into(handle, (header, data), compression_level))
    return atomic_write_binary(path, lambda handle: (handle.write(header), handle.write(data)))


_DEFLATE_BYTES = 8 << 20  # raw bytes handed to the compressor at a time


def _deflate_into(handle: BinaryIO, parts: Sequence[bytes | memoryview], level: int) -> None:
    """Deflate ``parts`` one after the other into the open binary ``handle`` as one gzip member (no name,
    mtime 0), with the active codec; its output is written as it comes."""
    deflater = codec.active().deflater(level)
    for part in parts:
        for start in range(0, len(part), _DEFLATE_BYTES):
            handle.write(deflater.compress(part[start:start + _DEFLATE_BYTES]))
    handle.write(deflater.flush())


# --- the header SimpleITK writes ----------------------------------------------------------------------------
#
# ITK's NiftiImageIO (ITK 5.4, nifti1_io.c) builds the orientation in float and double arithmetic, with a few
# long double divisions: each step below is the C one, rounding where C rounds (``_f``: to float; double
# arithmetic is Python's; ``_ld``: long double). tests/test_codec.py compares the bytes with SimpleITK's
# on LPS, RAS, permuted, oblique, float-rounded and slightly non-orthogonal grids of every type.

_CODE_OF = {np.dtype(t).str[1:]: code for code, t in DATATYPES.items()}  # "i2" -> 4
_LD = np.longdouble


def _f(x: float) -> float:
    """C's ``(float)x``, kept as a Python float."""
    return float(np.float32(x))


def _ld(x: float) -> np.longdouble:
    return _LD(x)


def _determ(m: list[list[float]]) -> float:
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = m
    return r11 * r22 * r33 - r11 * r32 * r23 - r21 * r12 * r33 + r21 * r32 * r13 + r31 * r12 * r23 - r31 * r22 * r13


def _inverse(m: list[list[float]]) -> list[list[float]]:
    """nifti_mat33_inverse."""
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = m
    deti = _determ(m)
    if deti != 0.0:
        deti = float(_ld(1.0) / _ld(deti))
    return [[_f(deti * (r22 * r33 - r32 * r23)), _f(deti * (-r12 * r33 + r32 * r13)),
             _f(deti * (r12 * r23 - r22 * r13))],
            [_f(deti * (-r21 * r33 + r31 * r23)), _f(deti * (r11 * r33 - r31 * r13)),
             _f(deti * (-r11 * r23 + r21 * r13))],
            [_f(deti * (r21 * r32 - r31 * r22)), _f(deti * (-r11 * r32 + r31 * r12)),
             _f(deti * (r11 * r22 - r21 * r12))]]


def _rownorm(m: list[list[float]]) -> float:
    return max(_f(abs(row[0]) + abs(row[1]) + abs(row[2])) for row in m)


def _colnorm(m: list[list[float]]) -> float:
    return max(_f(abs(m[0][c]) + abs(m[1][c]) + abs(m[2][c])) for c in range(3))


def _polar(a: list[list[float]]) -> list[list[float]]:
    """nifti_mat33_polar: the orthogonal matrix nearest ``a`` (floats)."""
    x = [row[:] for row in a]
    gam = _f(_determ(x))
    while gam == 0.0:  # perturb a singular matrix
        gam = _f(0.00001 * (0.001 + _rownorm(x)))
        for i in range(3):
            x[i][i] = _f(x[i][i] + gam)
        gam = _f(_determ(x))
    dif, rounds = 1.0, 0
    while True:
        y = _inverse(x)
        if dif > 0.3:
            alp = _f(math.sqrt(_f(_rownorm(x) * _colnorm(x))))
            bet = _f(math.sqrt(_f(_rownorm(y) * _colnorm(y))))
            gam = _f(math.sqrt(_f(bet / alp)))
            gmi = _f(1.0 / gam)
        else:
            gam = gmi = 1.0
        z = [[_f(0.5 * _f(_f(gam * x[i][j]) + _f(gmi * y[j][i]))) for j in range(3)] for i in range(3)]
        dif = _f(sum(abs(_f(z[i][j] - x[i][j])) for i in range(3) for j in range(3)))
        rounds += 1
        if rounds > 100 or dif < 3.0e-6:
            return z
        x = z


def _orthogonal_rows(rows: list[list[float]]) -> list[list[float]]:
    """nifti_make_orthog_mat44's 3x3 part: rows normalised in float, then :func:`_polar`."""
    q = [row[:] for row in rows]
    for n in range(3):
        r = q[n]
        norm2 = _f(_f(_f(r[0] * r[0]) + _f(r[1] * r[1])) + _f(r[2] * r[2]))
        if norm2 > 0.0:
            scale = _f(float(_ld(1.0) / _ld(math.sqrt(norm2))))
            q[n] = [_f(v * scale) for v in r]
        elif n < 2:
            q[n] = [1.0, 0.0, 0.0] if n == 0 else [0.0, 1.0, 0.0]
        else:  # the cross product of the first two rows
            a, b = q[0], q[1]
            q[2] = [_f(_f(a[1] * b[2]) - _f(a[2] * b[1])), _f(_f(a[2] * b[0]) - _f(a[0] * b[2])),
                    _f(_f(a[0] * b[1]) - _f(a[1] * b[0]))]
    return _polar(q)


def _quarter(num: float, den: float) -> float:
    """``0.25l * num / den`` assigned to a double."""
    return float(_ld(0.25) * _ld(num) / _ld(den))


def _half_sqrt(x: float) -> float:
    """``0.5l * sqrt(x)`` assigned to a double."""
    return float(_ld(0.5) * _ld(math.sqrt(x)))


def _quaternion(m: list[list[float]]) -> tuple[float, float, float, float]:
    """nifti_mat44_to_quatern of a 3x3 float matrix: (quatern_b, quatern_c, quatern_d, qfac) as floats."""
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = m
    xd = math.sqrt(r11 * r11 + r21 * r21 + r31 * r31)
    yd = math.sqrt(r12 * r12 + r22 * r22 + r32 * r32)
    zd = math.sqrt(r13 * r13 + r23 * r23 + r33 * r33)
    if xd == 0.0:
        r11, r21, r31, xd = 1.0, 0.0, 0.0, 1.0
    if yd == 0.0:
        r22, r12, r32, yd = 1.0, 0.0, 0.0, 1.0
    if zd == 0.0:
        r33, r13, r23, zd = 1.0, 0.0, 0.0, 1.0
    r11, r21, r31 = r11 / xd, r21 / xd, r31 / xd
    r12, r22, r32 = r12 / yd, r22 / yd, r32 / yd
    r13, r23, r33 = r13 / zd, r23 / zd, r33 / zd
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = _polar(
        [[_f(r11), _f(r12), _f(r13)], [_f(r21), _f(r22), _f(r23)], [_f(r31), _f(r32), _f(r33)]])
    det = r11 * r22 * r33 - r11 * r32 * r23 - r21 * r12 * r33 + r21 * r32 * r13 + r31 * r12 * r23 - r31 * r22 * r13
    qfac = 1.0 if det > 0 else -1.0
    if det <= 0:  # improper: flip the third column
        r13, r23, r33 = -r13, -r23, -r33
    a = float(_ld(r11 + r22 + r33) + _ld(1.0))
    if a > 0.5:
        a = _half_sqrt(a)
        b, c, d = _quarter(r32 - r23, a), _quarter(r13 - r31, a), _quarter(r21 - r12, a)
    else:
        xd, yd, zd = 1.0 + r11 - (r22 + r33), 1.0 + r22 - (r11 + r33), 1.0 + r33 - (r11 + r22)
        if xd > 1.0:
            b = _half_sqrt(xd)
            c, d, a = _quarter(r12 + r21, b), _quarter(r13 + r31, b), _quarter(r32 - r23, b)
        elif yd > 1.0:
            c = _half_sqrt(yd)
            b, d, a = _quarter(r12 + r21, c), _quarter(r23 + r32, c), _quarter(r13 - r31, c)
        else:
            d = _half_sqrt(zd)
            b, c, a = _quarter(r13 + r31, d), _quarter(r23 + r32, d), _quarter(r21 - r12, d)
        if a < 0.0:
            b, c, d = -b, -c, -d
    return _f(b), _f(c), _f(d), qfac


def nifti_header(dtype: np.dtype | type, geometry: Geometry) -> bytes:
    """The 352 bytes (NIfTI-1 header and an empty extension flag) that SimpleITK's ``WriteImage`` writes for
    an image of ``dtype`` (one of :data:`DATATYPES`' types, little-endian) on ``geometry``: qform and sform
    both ``scanner`` from the direction (orthogonalised in float as ITK does), ``pixdim`` the spacing as
    float, millimetres and seconds, ``vox_offset`` 352, ``scl_slope`` 1."""
    stored = np.dtype(dtype)
    code = _CODE_OF.get(stored.newbyteorder("<").str[1:])
    if code is None:
        raise TypeError(f"dtype {stored} cannot be written as NIfTI-1")
    if max(geometry.size) > 32767 or min(geometry.size) < 1:
        raise ValueError(f"size {_plain(geometry.size)}: NIfTI-1 holds 1..32767 voxels a side")
    d = [[float(v) for v in geometry.direction[3 * r:3 * r + 3]] for r in range(3)]
    # Axis n is column n of the direction, LPS -> RAS: x and y negated (in double, then float), z as is.
    rows = [[_f(-d[0][n]), _f(-d[1][n]), -_f(-d[2][n])] for n in range(3)]
    p = _orthogonal_rows(rows)
    m = [[p[j][i] for j in range(3)] for i in range(3)]  # transposed: the axes are columns
    offset = (_f(-float(geometry.origin[0])), _f(-float(geometry.origin[1])), _f(float(geometry.origin[2])))
    qb, qc, qd, qfac = _quaternion(m)
    spacing = [_f(float(s)) for s in geometry.spacing]
    srow = [[_f(spacing[j] * m[i][j]) for j in range(3)] + [offset[i]] for i in range(3)]
    header = bytearray(MIN_VOX_OFFSET)
    struct.pack_into("<i", header, 0, HEADER_BYTES)
    header[38] = ord("r")  # regular
    struct.pack_into("<8h", header, 40, 3, *geometry.size, 1, 1, 1, 1)
    struct.pack_into("<2h", header, 70, code, 8 * stored.itemsize)
    struct.pack_into("<8f", header, 76, qfac, *(abs(s) for s in spacing), 0.0, 0.0, 0.0, 0.0)
    struct.pack_into("<3f", header, 108, float(MIN_VOX_OFFSET), 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    header[123] = 2 | 8  # xyzt_units: mm, s
    struct.pack_into("<2h", header, 252, 1, 1)  # qform_code, sform_code: scanner
    struct.pack_into("<6f", header, 256, qb, qc, qd, *offset)
    struct.pack_into("<12f", header, 280, *srow[0], *srow[1], *srow[2])
    header[344:348] = b"n+1\0"
    return bytes(header)


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
