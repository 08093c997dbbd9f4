"""Hostile and unusual NIfTI files: the header-first, bounded reader (challenge.nifti) against SimpleITK, and
the evaluator's statuses for crafted predictions, in both modes. Peak memory is measured in fresh processes.

Crafted files are written byte by byte: a nibabel header (348 bytes), the 4-byte extension flag, the data.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from challenge.nifti import (
    DATATYPES,
    MAX_EXTENSION_BYTES,
    Geometry,
    NiftiError,
    ShapeError,
    read_geometry,
    read_header,
    read_image,
    read_labels,
    write_image,
    write_label,
)
from evaluator.metrics import clean_labels
from evaluator.scoring import score_case

nib = pytest.importorskip("nibabel")

REPO = Path(__file__).resolve().parents[1]
GRID = Geometry(size=(20, 18, 12), spacing=(0.9, 1.1, 2.5), origin=(-10.0, 5.0, 30.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
RANGE = "one of uint8, int8, int16, uint16, int32, uint32, int64, uint64, float32, float64"


def organ_labels(shape: tuple[int, int, int] = GRID.shape) -> np.ndarray:
    """Liver and spleen blocks (no tubular organ: no single-slice warnings in the statuses)."""
    labels = np.zeros(shape, np.uint8)
    k, j, i = shape
    labels[1:k - 2, 2:j // 2, 3:i // 2] = 1
    labels[2:k - 1, j // 2 + 1:j - 1, i // 2 + 1:i - 2] = 3
    return labels


def header_like(template: Path, dtype: np.dtype | type, **fields: object) -> nib.Nifti1Header:
    """The template file's header (same grid), with another data type and fields; vox_offset 352, no rescale."""
    header = nib.load(template).header.copy()
    header.set_data_dtype(dtype)
    header["vox_offset"], header["scl_slope"], header["scl_inter"] = 352, 1.0, 0.0
    for name, value in fields.items():
        header[name] = value
    return header


def nifti_bytes(header: nib.Nifti1Header, data: bytes | np.ndarray) -> bytes:
    """Header, extension flag, data. An array is written in (k, j, i) C order (i fastest, as NIfTI stores it)
    in the header's byte order and type."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data, header.get_data_dtype()).tobytes()
    return header.binaryblock + b"\0" * 4 + data


def save(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, 1) if path.name.endswith(".gz") else raw)
    return path


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, Path]:
    """(GT path, prediction path to fill) on GRID."""
    gt = write_label(organ_labels(), GRID, tmp_path / "gt" / "A.nii.gz")
    return gt, tmp_path / "pred" / "A.nii.gz"


def statuses(gt: Path, pred: Path) -> dict[str, str]:
    return {mode: score_case(gt, pred, mode=mode).status for mode in ("flare22", "strict")}


# --- the reader equals SimpleITK, bit for bit ---------------------------------------------------------------

def assert_same_as_sitk(path: Path) -> None:
    image = sitk.ReadImage(str(path))
    expected = sitk.GetArrayFromImage(image)
    array, geometry = read_image(path)
    assert array.dtype == expected.dtype and array.shape == expected.shape, path.name
    assert array.tobytes() == expected.tobytes(), path.name
    assert geometry == Geometry.of(image) == read_header(path).geometry() == read_geometry(path), path.name
    labels, issues = read_labels(path, expected.shape, chunk_voxels=1000)
    cleaned, outside = clean_labels(expected)
    if issues.non_finite == 0:  # ITK reads NaN and inf as 0 (then rescales); read_labels counts them
        assert np.array_equal(labels, cleaned) and issues.outside == outside, path.name


@pytest.mark.parametrize(("orientation", "oblique"), [("LPS", 0.0), ("RAS", 0.0), ("LPS", 20.0), ("RAS", 12.0)])
def test_phantom_grids_read_as_simpleitk_reads_them(tmp_path, orientation, oblique):
    from phantoms.generate import PhantomConfig, generate_case

    phantom = generate_case(3, 0, PhantomConfig(shape=(64, 64, 24), orientation=orientation, oblique_deg=oblique))
    assert_same_as_sitk(write_image(phantom.image, phantom.geometry, tmp_path / "P_0000.nii.gz"))
    assert_same_as_sitk(write_label(phantom.labels, phantom.geometry, tmp_path / "P.nii.gz"))


def test_real_ct_reads_as_simpleitk_reads_it(real_ct):
    for path in sorted(real_ct.rglob("*.nii.gz")):
        assert_same_as_sitk(path)


def _affine(rng: np.random.Generator) -> np.ndarray:
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation * rng.uniform(0.5, 3.0, 3)
    affine[:3, 3] = rng.uniform(-200, 200, 3)
    return affine


def test_headers_the_phantoms_do_not_make_read_as_simpleitk_reads_them(tmp_path):
    rng = np.random.default_rng(7)
    data = rng.integers(-2000, 2000, size=(6, 5, 4), dtype=np.int16)  # (i, j, k) for nibabel
    written = []
    for name, (qcode, scode) in {"qform": (1, 0), "sform": (0, 2), "both": (1, 4)}.items():
        image = nib.Nifti1Image(data, None)
        image.set_qform(_affine(rng) if qcode else None, code=qcode)
        image.set_sform(_affine(rng) if scode else None, code=scode)
        path = tmp_path / f"{name}.nii.gz"
        nib.save(image, path)
        written.append(path)
    template = written[0]
    values = {np.int16: rng.integers(-3000, 3000, (4, 5, 6)), np.uint8: rng.integers(0, 255, (4, 5, 6)),
              np.int8: rng.integers(-128, 127, (4, 5, 6)), np.float32: rng.normal(0, 100, (4, 5, 6)),
              np.float64: rng.normal(0, 100, (4, 5, 6))}
    for dtype, array in values.items():
        plain = header_like(template, dtype)
        written.append(save(tmp_path / f"{np.dtype(dtype).name}.nii.gz", nifti_bytes(plain, array)))
    scaled = {"i16_slope": header_like(template, np.int16, scl_slope=2.5, scl_inter=-1024.0),
              "u8_slope": header_like(template, np.uint8, scl_slope=0.5, scl_inter=3.0),
              "f32_slope": header_like(template, np.float32, scl_slope=3.0, scl_inter=0.25),
              "u8_zero_slope": header_like(template, np.uint8, scl_slope=0.0, scl_inter=7.0)}
    for name, header in scaled.items():
        array = values[header.get_data_dtype().type]
        written.append(save(tmp_path / f"{name}.nii.gz", nifti_bytes(header, array)))
    big = header_like(template, np.int16).as_byteswapped(">")
    written.append(save(tmp_path / "big_endian.nii.gz", nifti_bytes(big, values[np.int16])))
    big = header_like(template, np.float64, scl_slope=2.0, scl_inter=1.0).as_byteswapped(">")
    written.append(save(tmp_path / "big_endian_f64.nii.gz", nifti_bytes(big, values[np.float64])))
    raw = nifti_bytes(header_like(template, np.int16), values[np.int16])
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:300]) + gzip.compress(raw[300:]))
    written.append(tmp_path / "members.nii.gz")
    written.append(save(tmp_path / "plain.nii", raw))
    for path in written:
        assert_same_as_sitk(path)


@pytest.mark.parametrize("stored", sorted(set(DATATYPES.values())))
@pytest.mark.parametrize("order", ["<", ">"])
def test_every_type_order_and_rescale_reads_as_simpleitk_does(tmp_path, stored, order):
    """ITK rescales in double, integers through float32 first; NaN slope/intercept read as 0, a zero slope as 1,
    NaN and inf in float data as 0."""
    rng = np.random.default_rng(0)
    dtype = np.dtype(stored)
    if dtype.kind == "f":
        values = rng.normal(0, 1e4, 5 * 4 * 3).astype(dtype)
        values[:6] = [np.nan, np.inf, -np.inf, 1.5, -0.5, 2.0**25 + 1]
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, 5 * 4 * 3, dtype=dtype, endpoint=True)
        values[:2] = info.min, info.max
    small = Geometry((5, 4, 3), GRID.spacing, GRID.origin, GRID.direction)
    template = write_label(np.zeros(small.shape, np.uint8), small, tmp_path / "t.nii.gz")
    rescales = [(1.0, 0.0), (2.5, -1024.0), (0.0, 5.0), (np.nan, np.nan), (np.nan, 3.0), (3.0, np.nan),
                (0.1, 0.2), (1.0000001, 0.0), (1e-20, 2.0), (-1.0, 0.0), (1e30, 0.0)]
    for n, (slope, inter) in enumerate(rescales):
        header = header_like(template, dtype, scl_slope=slope, scl_inter=inter)
        header = header.as_byteswapped(">") if order == ">" else header
        assert_same_as_sitk(save(tmp_path / f"r{n}.nii.gz", nifti_bytes(header, values.reshape(3, 4, 5))))


def test_trailing_dimensions_of_one_are_3d_as_in_itk(case):
    gt, pred = case
    for rank in (4, 5, 7):
        dim = [rank, *GRID.size] + [1] * 4
        header = header_like(gt, np.uint8, dim=dim[:8])
        path = save(pred.parent / f"d{rank}.nii.gz", nifti_bytes(header, organ_labels()))
        assert_same_as_sitk(path)
        assert read_header(path).shape == GRID.shape
    save(pred, nifti_bytes(header_like(gt, np.uint8, dim=[5, *GRID.size, 1, 1, 1, 1]), organ_labels()))
    assert statuses(gt, pred) == {"flare22": "ok", "strict": "ok"}


# --- the evaluator on crafted predictions -------------------------------------------------------------------

@pytest.mark.parametrize("side", [2048, 1024])
def test_a_tiny_header_declaring_a_huge_image_is_invalid_at_once(case, side):
    gt, pred = case
    header = header_like(gt, np.uint8)
    header.set_data_shape((side, side, side))
    save(pred, nifti_bytes(header, b""))
    assert pred.stat().st_size < 200
    clock = time.perf_counter()
    expected = f"invalid: shape ({side}, {side}, {side}) != GT shape (12, 18, 20) (k, j, i)"
    assert statuses(gt, pred) == {"flare22": expected, "strict": expected}
    assert time.perf_counter() - clock < 2.0  # nothing inflated, nothing allocated
    with pytest.raises(NiftiError, match=rf"A.nii.gz: {side**3} voxels declared .* over the cap of 536870912"):
        read_image(pred)
    with pytest.raises(ShapeError, match=r"shape .* != expected \(12, 18, 20\)"):
        read_labels(pred, GRID)


def test_a_data_section_cut_in_half_in_a_complete_gzip_is_truncated(case):
    gt, pred = case
    data = organ_labels().tobytes()
    save(pred, nifti_bytes(header_like(gt, np.uint8), data[: len(data) // 2]))
    expected = f"invalid: A.nii.gz: truncated data: got {len(data) // 2} of {len(data)} bytes"
    assert statuses(gt, pred) == {"flare22": expected, "strict": expected}


def test_extra_bytes_after_the_data_are_trailing_data(case):
    gt, pred = case
    save(pred, nifti_bytes(header_like(gt, np.uint8), organ_labels().tobytes() + b"\0" * 10))
    expected = f"invalid: A.nii.gz: trailing data: more than the {GRID.shape[0] * 18 * 20} bytes the header declares"
    assert statuses(gt, pred) == {"flare22": expected, "strict": expected}


def test_plain_nii_must_be_exactly_as_long_as_declared(case):
    gt, pred = case
    raw = nifti_bytes(header_like(gt, np.uint8), organ_labels())
    nbytes = organ_labels().nbytes
    for name, content, message in [
        ("short.nii", raw[:-5], f"truncated data: got {nbytes - 5} of {nbytes} bytes"),
        ("long.nii", raw + b"xyz", f"trailing data: 3 bytes after the {nbytes} bytes the header declares"),
    ]:
        with pytest.raises(NiftiError, match=message):
            read_image(save(pred.parent / name, content))
    array, _ = read_image(save(pred.parent / "exact.nii", raw))
    assert np.array_equal(array, organ_labels())


def test_a_gzip_stream_that_ends_early_or_is_corrupt_keeps_its_message(case):
    gt, pred = case
    packed = gzip.compress(nifti_bytes(header_like(gt, np.uint8), organ_labels()))
    pred.parent.mkdir(parents=True)
    pred.write_bytes(packed[:-6])  # the CRC trailer cut: every voxel is there
    expected = "invalid: A.nii.gz: truncated (the gzip stream ends early)"
    assert statuses(gt, pred) == {"flare22": expected, "strict": expected}
    pred.write_bytes(packed + b"\0" * 8)  # padding after the last member
    assert score_case(gt, pred).status.startswith("invalid: A.nii.gz: corrupt gzip data (")


def test_non_integer_floats_are_invalid_in_strict_and_a_warning_in_flare22(case):
    gt, pred = case
    values = organ_labels().astype(np.float32)
    values[0, 0, :5] = 1.5
    values[5, 5, 5] = -0.5
    save(pred, nifti_bytes(header_like(gt, np.float32), values))
    assert statuses(gt, pred) == {
        "flare22": "ok; warning: 6 voxels with non-integer values (truncated, as the official code does)",
        "strict": "invalid: 6 voxels with non-integer values"}


def test_nan_and_inf_are_counted_and_ignored(case):
    gt, pred = case
    values = organ_labels().astype(np.float64)
    values[0, 0, :3] = np.nan
    values[1, 1, :2] = np.inf, -np.inf
    values[2, 2, 2] = 2.5
    save(pred, nifti_bytes(header_like(gt, np.float64), values))
    assert statuses(gt, pred) == {
        "flare22": "ok; warning: 5 voxels with values outside 0..13, 5 of them NaN or inf (ignored, as the official "
                   "code does); 1 voxels with non-integer values (truncated, as the official code does)",
        "strict": "invalid: 5 voxels with values outside 0..13, 5 of them NaN or inf; 1 voxels with non-integer values"}


def test_values_outside_0_to_13(case):
    gt, pred = case
    values = organ_labels().astype(np.int16)
    values[0, 0, :3] = -1, 14, 300
    save(pred, nifti_bytes(header_like(gt, np.int16), values))
    assert statuses(gt, pred) == {
        "flare22": "ok; warning: 3 voxels with values outside 0..13 (ignored, as the official code does)",
        "strict": "invalid: 3 voxels with values outside 0..13"}


def test_rgb_and_4d_are_refused(case):
    gt, pred = case
    rgb = header_like(gt, np.uint8, datatype=128, bitpix=24)
    save(pred, nifti_bytes(rgb, organ_labels().tobytes() * 3))
    expected = f"invalid: A.nii.gz: datatype 128 (RGB24) is not supported ({RANGE})"
    assert statuses(gt, pred) == {"flare22": expected, "strict": expected}
    four = header_like(gt, np.uint8, dim=[4, *GRID.size, 2, 1, 1, 1])
    save(pred, nifti_bytes(four, organ_labels().tobytes() * 2))
    expected = "invalid: A.nii.gz: expected a 3D single-channel image, got 4D (dim (20, 18, 12, 2))"
    assert statuses(gt, pred) == {"flare22": expected, "strict": expected}


@pytest.mark.parametrize(("fields", "message"), [
    ({"pixdim": [1.0, 0.9, np.nan, 2.5, 1, 1, 1, 1]}, "pixdim[2] = nan: voxel spacing must be finite and > 0"),
    ({"pixdim": [1.0, 0.0, 1.1, 2.5, 1, 1, 1, 1]}, "pixdim[1] = 0.0: voxel spacing must be finite and > 0"),
    ({"vox_offset": 352 + MAX_EXTENSION_BYTES + 16},
     f"vox_offset {352.0 + MAX_EXTENSION_BYTES + 16}: expected a whole number in 352..{352 + MAX_EXTENSION_BYTES} "
     "(at most 16 MiB of header extensions)"),
    ({"vox_offset": 0}, "vox_offset 0.0: expected a whole number in 352..16777568 (at most 16 MiB of header "
                        "extensions)"),
    ({"dim": [3, 20, 18, 0, 1, 1, 1, 1]}, "dim[3] = 0: every dimension must be >= 1"),
    ({"bitpix": 16}, "bitpix 16 disagrees with datatype 2 (uint8: 8)"),
    ({"scl_slope": np.inf}, "scl_slope inf: must be finite"),
    ({"magic": b"ni1"}, "a two-file NIfTI (magic 'ni1'): only single-file .nii/.nii.gz NIfTI-1"),
    ({"sizeof_hdr": 540}, "sizeof_hdr 540: NIfTI-2 is not supported (expected 348)"),
])
def test_bad_header_fields_are_named(case, fields, message):
    gt, pred = case
    save(pred, nifti_bytes(header_like(gt, np.uint8, **fields), organ_labels()))
    expected = f"invalid: A.nii.gz: {message}"
    assert statuses(gt, pred) == {"flare22": expected, "strict": expected}


def test_statuses_print_plain_numbers(case):
    gt, pred = case
    write_label(organ_labels(), Geometry(GRID.size, (0.9, 1.2, 2.5), GRID.origin, GRID.direction), pred)
    assert statuses(gt, pred) == {
        "flare22": "ok; warning: header differs from the GT (spacing (0.9, 1.2, 2.5) != (0.9, 1.1, 2.5)); scored on "
                   "the arrays as the official code does",
        "strict": "invalid: header differs from the GT: spacing (0.9, 1.2, 2.5) != (0.9, 1.1, 2.5)"}


# --- GT and CT over the voxel cap ---------------------------------------------------------------------------

def test_a_gt_over_the_voxel_cap_is_bad_input(case, tmp_path, capsys):
    from evaluator.cli import main

    gt, pred = case
    write_label(organ_labels(), GRID, pred)
    with pytest.raises(NiftiError, match=r"A.nii.gz: 4320 voxels declared \(dim \(20, 18, 12\)\), over the cap"):
        score_case(gt, pred, max_voxels=4000)
    assert score_case(gt, pred, max_voxels=4320).status == "ok"
    out = tmp_path / "scores"
    with pytest.raises(SystemExit) as info:
        main(["score", "--gt", str(gt.parent), "--pred", str(pred.parent), "--out", str(out), "--max-voxels",
              "4000", "-q"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"flare-evaluate score: error: {gt}: 4320 voxels declared (dim (20, 18, 12)), over the cap of 4000 "
                   "(--max-voxels)")
    assert not (out / "metrics.csv").exists()


def test_the_predictor_refuses_a_ct_over_the_cap_alone(tmp_path):
    import queue

    from predictor.cli import _reader, parse_args

    image = write_image(np.zeros(GRID.shape, np.int16), GRID, tmp_path / "in" / "Big_0000.nii.gz")
    for cap, error in [(4000, f"{image}: 4320 voxels declared (dim (20, 18, 12)), over the cap of 4000 "
                               "(--max-voxels)"), (4320, None)]:
        loads: queue.Queue = queue.Queue()
        _reader({"Big": image}, loads, max_voxels=cap)
        assert loads.get().error == error
    assert parse_args(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o")]).max_voxels == 512 * 512 * 2048
    with pytest.raises(SystemExit) as info:
        parse_args(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--max-voxels", "0"])
    assert info.value.code == 2


# --- peak memory, measured in fresh processes ---------------------------------------------------------------

PEAK = """
import sys
sys.path.insert(0, {root!r})
from challenge.nifti import read_header, read_labels
from evaluator.scoring import score_case
def status_kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
base = status_kib("VmRSS")
{call}
print(status_kib("VmHWM") - base)
"""
MEMORY_GRID = Geometry((256, 256, 128), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def peak_growth_bytes(call: str) -> int:
    """How far the peak resident memory of a fresh process that runs ``call`` rises above its resident memory
    after the imports. VmHWM, not ru_maxrss: after fork + exec Linux's ru_maxrss starts at the parent's
    (pytest's) peak, which hides the growth; and VmRSS as the baseline, so the imports' own transient peak
    cannot hide it either."""
    code = PEAK.format(root=str(REPO), call=textwrap.dedent(call))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) * 1024  # KiB on Linux


@pytest.fixture(scope="module")
def memory_case(tmp_path_factory) -> tuple[Path, Path, Path]:
    """An 8 MiB uint8 GT (256 x 256 x 128), a float64 prediction of its shape with NaN, inf and 1.5 values, and a
    tiny header declaring 2048^3 voxels."""
    folder = tmp_path_factory.mktemp("memory")
    labels = organ_labels(MEMORY_GRID.shape)
    gt = write_label(labels, MEMORY_GRID, folder / "gt" / "A.nii.gz")
    values = labels.astype(np.float64)
    values[::7, ::3, ::5] = np.nan
    values[1::11, ::2, ::3] = 1.5
    values[2::13, 1::4, ::2] = np.inf
    pred = save(folder / "pred" / "A.nii.gz", nifti_bytes(header_like(gt, np.float64), values))
    header = header_like(gt, np.uint8)
    header.set_data_shape((2048, 2048, 2048))
    huge = save(folder / "huge" / "A.nii.gz", nifti_bytes(header, b""))
    return gt, pred, huge


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux's")
def test_reading_a_prediction_stays_within_three_times_the_gt(memory_case):
    gt, pred, huge = memory_case
    gt_bytes = MEMORY_GRID.shape[0] * MEMORY_GRID.shape[1] * MEMORY_GRID.shape[2]
    shape = MEMORY_GRID.shape
    float64 = peak_growth_bytes(f"labels, issues = read_labels({str(pred)!r}, {shape})\n"
                                f"assert issues.non_finite > 0 and issues.non_integer > 0")
    header_only = peak_growth_bytes(f"assert read_header({str(huge)!r}).shape != {shape}")
    scored = peak_growth_bytes(f"assert score_case({str(gt)!r}, {str(huge)!r}).status.startswith('invalid: shape')")
    print(f"peak growth over imports: float64 prediction {float64 / 2**20:.1f} MiB, 2048^3 header "
          f"{header_only / 2**20:.1f} MiB, score_case with the 2048^3 header {scored / 2**20:.1f} MiB "
          f"(GT {gt_bytes / 2**20:.0f} MiB)")
    assert float64 <= 3 * gt_bytes
    assert header_only <= 3 * gt_bytes
    assert scored <= 3 * gt_bytes
