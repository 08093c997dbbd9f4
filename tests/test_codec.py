"""challenge.codec and the NIfTI writer built on it: the header bytes are SimpleITK's, the files read back through
read_image, SimpleITK and nibabel with identical arrays and geometry, ISA-L and zlib (FLARE_CODEC=zlib) give the
same arrays, and a damaged gzip stream fails with the same message whichever codec reads it."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from challenge import codec
from challenge.nifti import (
    DATATYPES,
    Geometry,
    NiftiError,
    nifti_header,
    read_header,
    read_image,
    read_labels,
    write_image,
    write_label,
)

nib = pytest.importorskip("nibabel")

TYPES = sorted({np.dtype(t) for t in DATATYPES.values()}, key=str)
CODECS = sorted(codec.available())  # ["isal", "zlib"] where isal is installed


@pytest.fixture(params=CODECS)
def each_codec(request, monkeypatch) -> str:
    monkeypatch.setenv(codec.ENV, request.param)
    return request.param


def sitk_bytes(array: np.ndarray, geometry: Geometry, path: Path) -> bytes:
    """What SimpleITK writes for ``array`` on ``geometry`` (an uncompressed .nii)."""
    sitk.WriteImage(geometry.apply(sitk.GetImageFromArray(array)), str(path), useCompression=False)
    return path.read_bytes()


def rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q


def grids(rng: np.random.Generator, count: int) -> list[Geometry]:
    """LPS, RAS, permuted axes, small obliques, any rotation, float-rounded and slightly non-orthogonal
    directions, with random sizes, spacings and origins."""
    out = []
    for n in range(count):
        kind = n % 7
        if kind == 0:
            direction = np.eye(3)
        elif kind == 1:
            direction = np.diag([-1.0, -1.0, 1.0])  # RAS voxel axes, as sitk sees them
        elif kind == 2:
            direction = np.diag(rng.choice([-1.0, 1.0], 3))[rng.permutation(3)]
        elif kind == 3:
            t = np.radians(rng.uniform(-30, 30))
            direction = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        elif kind == 4:
            direction = rotation(rng)
        elif kind == 5:
            direction = rotation(rng).astype(np.float32).astype(float)
        else:
            direction = rotation(rng) + rng.normal(0, 1e-5, (3, 3))
        out.append(Geometry(tuple(int(v) for v in rng.integers(1, 9, 3)),
                            tuple(float(v) for v in rng.uniform(0.3, 5.0, 3)),
                            tuple(float(v) for v in rng.uniform(-500, 500, 3)), tuple(direction.ravel())))
    return out


# --- the header ---------------------------------------------------------------------------------------------

def test_the_header_is_simpleitks_byte_for_byte(tmp_path):
    rng = np.random.default_rng(11)
    for n, grid in enumerate(grids(rng, 280)):
        dtype = TYPES[n % len(TYPES)]
        expected = sitk_bytes(np.zeros(grid.shape, dtype), grid, tmp_path / "x.nii")[:352]
        assert nifti_header(dtype, grid) == expected, (n, dtype, grid)


def test_the_phantom_grids_and_files_are_simpleitks(tmp_path):
    """The whole uncompressed file is SimpleITK's; the .nii.gz inflates to the same bytes, one gzip member."""
    from phantoms.generate import PhantomConfig, generate_case

    for n, (orientation, oblique) in enumerate([("LPS", 0.0), ("RAS", 0.0), ("LPS", 20.0), ("RAS", 12.0),
                                                ("random", 7.0)]):
        phantom = generate_case(5, n, PhantomConfig(shape=(40, 36, 20), orientation=orientation,
                                                    oblique_deg=oblique))
        for array in (phantom.image, phantom.labels, phantom.image.astype(np.float32)):
            expected = sitk_bytes(array, phantom.geometry, tmp_path / "sitk.nii")
            assert write_image(array, phantom.geometry, tmp_path / "mine.nii").read_bytes() == expected
            packed = write_image(array, phantom.geometry, tmp_path / "mine.nii.gz").read_bytes()
            assert gzip.decompress(packed) == expected
            inflater = zlib.decompressobj(wbits=31)
            assert inflater.decompress(packed) == expected and inflater.eof and inflater.unused_data == b""


# --- round trips ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("orientation", "oblique"), [("LPS", 0.0), ("RAS", 0.0), ("LPS", 20.0), ("RAS", 12.0)])
def test_round_trip_through_read_image_simpleitk_and_nibabel(tmp_path, each_codec, orientation, oblique):
    from phantoms.generate import PhantomConfig, generate_case

    phantom = generate_case(3, 1, PhantomConfig(shape=(48, 40, 24), orientation=orientation, oblique_deg=oblique))
    rng = np.random.default_rng(1)
    arrays = {"int16": phantom.image, "uint8": phantom.labels,
              "float32": phantom.image.astype(np.float32) + rng.normal(0, 1, phantom.image.shape).astype(np.float32),
              "int32": phantom.image.astype(np.int32) * 1000, "float64": rng.normal(0, 1e3, phantom.image.shape)}
    for name, array in arrays.items():
        reference = tmp_path / f"{name}_sitk.nii"
        sitk_bytes(array, phantom.geometry, reference)
        path = write_image(array, phantom.geometry, tmp_path / f"{name}.nii.gz")
        image = sitk.ReadImage(str(path))
        ours, geometry = read_image(path)
        assert ours.dtype == array.dtype and np.array_equal(ours, array), name
        assert np.array_equal(sitk.GetArrayFromImage(image), array), name
        assert geometry == Geometry.of(image) == Geometry.of(sitk.ReadImage(str(reference))), name
        assert geometry.mismatch(phantom.geometry, tol=1e-4) is None, name
        loaded = nib.load(path)
        assert np.array_equal(np.asarray(loaded.dataobj).transpose(2, 1, 0), array), name
        assert np.array_equal(loaded.affine, nib.load(reference).affine), name
        assert nib.aff2axcodes(loaded.affine) == nib.aff2axcodes(nib.load(reference).affine)
    labels, issues = read_labels(write_label(phantom.labels, phantom.geometry, tmp_path / "l.nii.gz"), phantom.geometry)
    assert np.array_equal(labels, phantom.labels) and issues.outside == 0


def test_every_type_and_level_reads_back(tmp_path, each_codec):
    rng = np.random.default_rng(2)
    grid = grids(rng, 5)[4]
    for dtype in TYPES:
        info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
        array = rng.uniform(max(info.min, -1e6), min(info.max, 1e6), grid.shape).astype(dtype)
        for level in (0, 1, 2, 6, 9):
            path = write_image(array, grid, tmp_path / f"{dtype}_{level}.nii.gz", compression_level=level)
            ours, geometry = read_image(path)
            assert np.array_equal(ours, array) and geometry == Geometry.of(sitk.ReadImage(str(path)))
    with pytest.raises(ValueError, match="compression_level must be 0..9"):
        write_image(array, grid, tmp_path / "bad.nii.gz", compression_level=10)


def test_types_and_sizes_nifti1_cannot_hold_are_refused(tmp_path):
    grid = Geometry((4, 3, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    for dtype in (bool, np.float16, np.complex64):
        with pytest.raises(TypeError, match="cannot be written as NIfTI-1"):
            write_image(np.zeros(grid.shape, dtype), grid, tmp_path / "x.nii.gz")
    wide = Geometry((40000, 1, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    with pytest.raises(ValueError, match="1..32767 voxels a side"):
        write_image(np.zeros(wide.shape, np.uint8), wide, tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_big_endian_and_strided_arrays_are_written_as_their_values(tmp_path):
    grid = Geometry((6, 5, 4), (0.8, 0.9, 2.0), (1.0, 2.0, 3.0), tuple(np.eye(3).ravel()))
    values = np.arange(np.prod(grid.shape) * 2, dtype=">i2").reshape(*grid.shape[:2], -1)[:, :, ::2]
    array, _ = read_image(write_image(values, grid, tmp_path / "x.nii.gz"))
    assert array.dtype == np.int16 and np.array_equal(array, values)


# --- the fallback -----------------------------------------------------------------------------------------

def test_flare_codec_zlib_gives_the_same_arrays_and_geometry(tmp_path, monkeypatch):
    from phantoms.generate import PhantomConfig, generate_case

    phantom = generate_case(4, 0, PhantomConfig(shape=(64, 64, 24), orientation="RAS", oblique_deg=10.0))
    read: dict[tuple[str, str], tuple[np.ndarray, Geometry]] = {}
    for writer in CODECS:
        monkeypatch.setenv(codec.ENV, writer)
        path = write_image(phantom.image, phantom.geometry, tmp_path / f"{writer}.nii.gz")
        assert gzip.decompress(path.read_bytes())[:352] == nifti_header(np.int16, phantom.geometry)
        for reader in CODECS:
            monkeypatch.setenv(codec.ENV, reader)
            read[writer, reader] = read_image(path)
    arrays = [array for array, _ in read.values()]
    assert all(np.array_equal(array, phantom.image) for array in arrays)
    assert len({geometry for _, geometry in read.values()}) == 1


def test_the_codec_switches(monkeypatch):
    monkeypatch.delenv(codec.ENV, raising=False)
    assert codec.active().name == ("isal" if codec.ISAL is not None else "zlib")
    monkeypatch.setenv(codec.ENV, "zlib")
    assert codec.active() is codec.ZLIB
    monkeypatch.setenv(codec.ENV, "lz4")
    with pytest.raises(ValueError, match=r"FLARE_CODEC='lz4': expected one of auto, isal, zlib"):
        codec.active()
    monkeypatch.setenv(codec.ENV, "isal")
    monkeypatch.setattr(codec, "ISAL", None)  # as where the isal package is missing
    assert codec.active() is codec.ZLIB and codec.by_name("auto") is codec.ZLIB
    monkeypatch.undo()
    monkeypatch.delenv(codec.ENV, raising=False)
    with codec.using("zlib"):
        assert codec.active() is codec.ZLIB
        codec.use("auto")  # inside the block; the block's end restores what was forced before (nothing)
    assert codec.active().name == ("isal" if codec.ISAL is not None else "zlib")
    codec.use("zlib")
    assert codec.active() is codec.ZLIB
    codec.use(None)
    assert codec.active().name == ("isal" if codec.ISAL is not None else "zlib")


def test_isal_is_the_default_where_installed():
    pytest.importorskip("isal")
    assert codec.by_name("auto").name == "isal"
    assert codec.ISAL is not None and codec.ISAL.native_level(1) == 1


# --- gzip members and damaged streams ---------------------------------------------------------------------

def test_multi_member_gzip_reads(tmp_path, each_codec):
    grid = Geometry((30, 20, 10), (0.9, 1.1, 2.5), (-10.0, 5.0, 30.0), tuple(np.eye(3).ravel()))
    array = np.random.default_rng(3).integers(-1000, 1000, grid.shape).astype(np.int16)
    raw = gzip.decompress(write_image(array, grid, tmp_path / "one.nii.gz").read_bytes())
    for cuts in ([300], [352], [100, 353, 5000], list(range(1000, len(raw), 1777))):
        bounds = [0, *cuts, len(raw)]
        members = b"".join(gzip.compress(raw[a:b], 1) for a, b in zip(bounds, bounds[1:], strict=False))
        path = tmp_path / "members.nii.gz"
        path.write_bytes(members)
        read, geometry = read_image(path)
        assert np.array_equal(read, array) and geometry == Geometry.of(sitk.ReadImage(str(path)))


def outcome(call) -> str:
    try:
        result = call()
    except NiftiError as err:
        return f"NiftiError: {err}"
    return "ok " + repr(getattr(result, "shape", result))


def damaged(raw_gz: bytes, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Truncations, flipped bytes (in the gzip header, the deflate data, the CRC and the length), trailing
    garbage and padding, and a second member with a bad header."""
    n = len(raw_gz)
    cases = [(f"cut{k}", raw_gz[:k]) for k in (5, 12, 40, 200, n // 3, n // 2, n - 9, n - 8, n - 4, n - 1)]
    for k in [3, 9, 15, 30, 60, *rng.integers(10, n - 8, 14).tolist(), n - 8, n - 6, n - 3, n - 1]:
        flipped = bytearray(raw_gz)
        flipped[k] ^= 0x5A
        cases.append((f"flip{k}", bytes(flipped)))
    cases += [("zeros", raw_gz + b"\0" * 8), ("one zero", raw_gz + b"\0"), ("garbage", raw_gz + b"GARBAGE!!!!"),
              ("magic only", raw_gz + b"\x1f\x8b"), ("member+cut", raw_gz + raw_gz[:30]),
              ("two members", raw_gz + raw_gz)]
    return cases


def test_damaged_streams_fail_exactly_as_with_zlib(tmp_path, monkeypatch):
    """Every reader entry point, on every damaged file: the same outcome and message with each codec (the
    fast one replays a damaged stream with zlib)."""
    grid = Geometry((40, 30, 20), (0.9, 1.1, 2.5), (-10.0, 5.0, 30.0), tuple(np.eye(3).ravel()))
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 14, grid.shape).astype(np.uint8)
    ct = rng.normal(0, 300, grid.shape).astype(np.int16)
    results: dict[str, dict[str, str]] = {}
    for kind, array in (("labels", labels), ("ct", ct)):
        packed = write_image(array, grid, tmp_path / f"{kind}.nii.gz").read_bytes()
        for name, content in damaged(packed, rng):
            path = tmp_path / f"{kind}_{name}.nii.gz"
            path.write_bytes(content)
            calls = {"header": lambda p=path: read_header(p).shape, "image": lambda p=path: read_image(p)[0],
                     "labels": lambda p=path: read_labels(p, grid.shape, chunk_voxels=4096)[0]}
            for reader in CODECS:
                monkeypatch.setenv(codec.ENV, reader)
                for call_name, call in calls.items():
                    results.setdefault(f"{kind} {name} {call_name}", {})[reader] = outcome(call)
    differ = {case: by_codec for case, by_codec in results.items() if len(set(by_codec.values())) > 1}
    assert not differ
    messages = {message for by_codec in results.values() for message in by_codec.values()}
    assert any("corrupt gzip data" in m for m in messages) and any("truncated" in m for m in messages)
    assert any("trailing data" in m for m in messages) and any(m.startswith("ok") for m in messages)
