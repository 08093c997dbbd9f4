"""The predictor on arrays and through its CLI: orientation, resampling, geometry round trips, bad input.

Uses the shipped weights (predictor/weights/) on small phantoms; floors are loose because these
phantoms are coarser than the training ones, but a wrong axis, flip or grid fails them.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from challenge.nifti import read_geometry, read_image
from phantoms.generate import PhantomConfig, generate_case, write_case
from predictor.orientation import Reorientation
from predictor.pipeline import Predictor, roi_from_mask
from predictor.resample import resize_image, resize_labels, resize_probabilities

LIVER = 1
DSC_FLOOR = 0.80  # liver, on the original grid
CENTROID_MM = 12.0  # the liver spans ~150 mm: a wrong flip or axis swap moves it by tens of mm


def _direction(perm: tuple[int, int, int], signs: tuple[int, int, int]) -> tuple[float, ...]:
    d = np.zeros((3, 3))
    for voxel_axis, world_axis in enumerate(perm):
        d[world_axis, voxel_axis] = signs[voxel_axis]
    return tuple(d.ravel())


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, -1, 1), (1, -1, -1)])
def test_reorientation_is_exact_and_canonical(perm, signs):
    d = _direction(perm, signs)
    reo = Reorientation.from_direction(d)
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert np.array_equal(reo.inverse(reo.forward(a)), a)
    assert torch.equal(reo.inverse(reo.forward(torch.from_numpy(a))), torch.from_numpy(a))
    # canonical axis c must step along +world axis (2 - c): compare world positions of neighbouring voxels
    m = np.asarray(d).reshape(3, 3)
    for c in range(3):
        array_axis = reo.perm[c]
        voxel_axis = 2 - array_axis
        step = m[:, voxel_axis] * (-1 if reo.flip[c] else 1)
        assert step[2 - c] == 1.0


def test_oblique_direction_picks_nearest_axes():
    angle = np.deg2rad(25)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ras = np.diag([-1.0, -1.0, 1.0])
    reo = Reorientation.from_direction(tuple((rot @ ras).ravel()))
    assert reo.perm == (0, 1, 2) and reo.flip == (False, True, True)


def test_resize_labels_keeps_values_and_round_trips():
    labels = torch.randint(0, 14, (7, 9, 11), dtype=torch.uint8)
    up = resize_labels(labels, (14, 18, 22))
    assert up.dtype == torch.uint8 and set(up.unique().tolist()) <= set(labels.unique().tolist())
    assert torch.equal(resize_labels(up, (7, 9, 11)), labels)
    img = torch.rand(5, 6, 7)
    assert resize_image(img, (5, 6, 7)) is img
    channels = torch.rand(3, 5, 6, 7)  # each channel resized alone, as a (D, H, W) volume would be
    resized = resize_image(channels, (10, 3, 9))
    assert resized.shape == (3, 10, 3, 9)
    for c in range(3):
        torch.testing.assert_close(resized[c], resize_image(channels[c], (10, 3, 9)))


def test_resize_probabilities_is_the_argmax_of_all_classes_resized_at_once():
    """One class at a time, skipping those below 1/C, gives exactly the textbook C-channel trilinear + argmax;
    the skip is really taken (most classes here are below 1/C everywhere)."""
    torch.manual_seed(0)
    logits = torch.randn(14, 6, 7, 9) * 3
    logits[5:] -= 12  # classes 5..13 far below 1/14 everywhere
    prob = logits.softmax(0)
    assert (prob[5:].amax(dim=(1, 2, 3)) < 1 / 14).all()
    for size in ((12, 14, 18), (6, 20, 5), (6, 7, 9)):
        textbook = torch.nn.functional.interpolate(prob[None], size=size, mode="trilinear", align_corners=False)
        got = resize_probabilities(prob, size)
        assert got.dtype == torch.uint8 and got.shape == size
        assert torch.equal(got, textbook[0].argmax(0).to(torch.uint8))


def test_resize_probabilities_puts_a_boundary_between_coarse_voxels():
    """A sphere of radius 9.3 fine voxels, averaged into 3x3x3 blocks (partial-volume probabilities), comes
    back closer to the true sphere from its probabilities than by nearest neighbour from its labels."""
    n = 36
    z, y, x = np.mgrid[:n, :n, :n] + 0.5 - n / 2
    sphere = torch.from_numpy(np.sqrt(z**2 + y**2 + x**2) < 9.3)
    share = torch.nn.functional.avg_pool3d(sphere.float()[None, None], 3)[0, 0]  # (12, 12, 12)
    prob = torch.stack([1 - share, share])

    def dice(a: torch.Tensor) -> float:
        return float(2 * (a & sphere).sum() / (a.sum() + sphere.sum()))

    nearest = resize_labels((share > 0.5).to(torch.uint8), (n, n, n)).bool()
    smooth = resize_probabilities(prob, (n, n, n)).bool()
    assert dice(smooth) > dice(nearest) + 0.03 and dice(smooth) > 0.95  # measured 0.955 vs 0.896


def test_roi_from_mask_scales_and_clamps():
    mask = np.zeros((10, 10, 10), bool)
    mask[4:6, 4:6, 4:6] = True
    roi = roi_from_mask(mask, (100, 50, 20), (1.0, 2.0, 5.0), margin_mm=10.0)
    assert roi == (slice(30, 70), slice(15, 35), slice(6, 14))
    assert roi_from_mask(np.zeros((4, 4, 4), bool), (8, 8, 8), (1, 1, 1), 5.0) is None


@pytest.fixture(scope="module")
def model():
    return Predictor.load(device="cpu")


def test_air_only_gives_empty_output(model):
    air = np.full((40, 64, 64), -1000, dtype=np.int16)
    labels, timings = model.predict(air, (5.0, 6.0, 6.0))
    assert labels.shape == air.shape and labels.dtype == np.uint8 and not labels.any()
    assert timings.roi_fine_shape == ()


CASES = {
    "LPS": PhantomConfig(shape=(112, 112, 56), orientation="LPS", prefix="Lps"),
    "RAS": PhantomConfig(shape=(112, 112, 56), orientation="RAS", prefix="Ras"),
    "oblique": PhantomConfig(shape=(112, 112, 56), orientation="RAS", oblique_deg=20.0, prefix="Obl"),
}


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """Run the CLI once on one phantom per orientation; returns (data dir, output dir, completed process)."""
    root = tmp_path_factory.mktemp("orient")
    for i, config in enumerate(CASES.values()):
        write_case(generate_case(seed=77, index=i, config=config), root)
    out = root / "pred"
    proc = subprocess.run([sys.executable, "-m", "predictor", "-i", str(root / "images"), "-o", str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=600)
    return root, out, proc


def _world_centroid(mask: np.ndarray, geometry) -> np.ndarray:
    kji = np.argwhere(mask).mean(axis=0)
    return geometry.index_to_world(kji[::-1])[0]


@pytest.mark.parametrize("name", list(CASES))
def test_output_grid_and_liver_position(predicted, name):
    root, out, proc = predicted
    assert proc.returncode == 0, proc.stderr
    case = f"{CASES[name].prefix}_{list(CASES).index(name) + 1:04d}"
    gt, geo = read_image(root / "labels" / f"{case}.nii.gz")
    pred_path = out / f"{case}.nii.gz"
    assert read_geometry(pred_path).mismatch(geo) is None
    assert sitk.ReadImage(str(pred_path)).GetPixelID() == sitk.sitkUInt8
    pred, _ = read_image(pred_path)
    assert pred.max() <= 13
    p, g = pred == LIVER, gt == LIVER
    dsc = 2 * (p & g).sum() / (p.sum() + g.sum())
    assert dsc > DSC_FLOOR, f"{name}: liver DSC {dsc:.3f}"
    shift = np.linalg.norm(_world_centroid(p, geo) - _world_centroid(g, geo))
    assert shift < CENTROID_MM, f"{name}: liver centroid off by {shift:.1f} mm"


def _bad_inputs(folder):
    """One good phantom plus the five kinds of bad input; returns the bad files' names."""
    write_case(generate_case(seed=5, index=0, config=PhantomConfig(shape=(96, 96, 48), prefix="Good")),
               folder / "data")
    images = folder / "data" / "images"
    good = (images / "Good_0001_0000.nii.gz").read_bytes()
    (images / "Text_0000.nii.gz").write_text("this is not a NIfTI file\n")
    (images / "Truncated_0000.nii.gz").write_bytes(good[: len(good) // 2])
    (images / "Empty_0000.nii.gz").write_bytes(b"")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64), np.int16)), str(images / "Flat_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 8, 16, 16), np.int16)), str(images / "Time_0000.nii.gz"))
    return images, ["Text", "Truncated", "Empty", "Flat", "Time"]


def test_bad_inputs_fail_alone(tmp_path):
    images, bad = _bad_inputs(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "predictor", "-i", str(images), "-o", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad), proc.stderr
    for case in bad:
        assert sum(f"{case}_0000.nii.gz" in line for line in errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Good_0001.nii.gz"]  # nothing partial, nothing hidden
    assert read_geometry(out / "Good_0001.nii.gz").mismatch(read_geometry(images / "Good_0001_0000.nii.gz")) is None


def test_bad_arguments_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "predictor", "-i", str(tmp_path / "missing"), "-o", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "missing" in proc.stderr and "Traceback" not in proc.stderr


def test_keep_largest_components_keeps_big_pieces_and_drops_specks():
    """Organ 12 in two pieces of 64 and 27 voxels plus a 1-voxel speck; organ 1 in 64 + 8 voxels."""
    from predictor.pipeline import keep_largest_components

    y = np.zeros((20, 20, 20), np.uint8)
    y[0:4, 0:4, 0:4] = 12
    y[10:13, 10:13, 10:13] = 12
    y[18, 18, 18] = 12
    y[0:4, 10:14, 0:4] = 1
    y[10:12, 0:2, 16:18] = 1
    only = keep_largest_components(y.copy(), 1.0)
    assert (only == 12).sum() == 64 and (only == 1).sum() == 64
    share = keep_largest_components(y.copy(), 0.3)  # 27 >= 0.3 * 64 kept; 8 and 1 are not
    assert (share == 12).sum() == 64 + 27 and share[18, 18, 18] == 0 and (share == 1).sum() == 64


def test_dropped_components_become_background_in_the_probabilities():
    from predictor.pipeline import drop_small_components

    y = torch.zeros((12, 12, 12), dtype=torch.uint8)
    y[0:4, 0:4, 0:4] = 3
    y[9, 9, 9] = 3  # a speck
    prob = torch.nn.functional.one_hot(y.long(), 14).permute(3, 0, 1, 2).float() * 0.8 + 0.2 / 14
    kept = drop_small_components(y, prob, 0.3)
    assert kept[9, 9, 9] == 0 and (kept == 3).sum() == 64 and y[9, 9, 9] == 3  # the input is not changed
    assert prob[0, 9, 9, 9] == 1 and prob[3, 9, 9, 9] == 0 and prob[3, 0, 0, 0] > 0.8
    assert (resize_probabilities(prob, (24, 24, 24))[17:21, 17:21, 17:21] == 0).all()


@pytest.mark.parametrize(("shape", "multiple", "max_voxels", "overlap", "min_size", "cap"), [
    ((184, 136, 184), 8, 160**3, 0.25, 64, None),
    ((184, 136, 184), 8, 160**3, 0.25, 64, (128, 128, 128)),
    ((400, 400, 400), 8, 160**3, 0.25, 64, None),
    ((200, 512, 512), 8, 160**3, 0.25, 64, None),
    ((24, 40, 56), 8, 100, 0.25, 8, None),  # nothing fits: the smallest windows
    ((10, 14, 18), 2, 500, 0.5, 4, None),
])
def test_tile_windows_cover_everything_within_the_limits(shape, multiple, max_voxels, overlap, min_size, cap):
    from predictor.pipeline import tile_windows

    win, starts = tile_windows(shape, multiple, max_voxels, overlap, min_size, cap)
    covered = np.zeros(shape, bool)
    for z, y, x in itertools.product(*starts):
        covered[z:z + win[0], y:y + win[1], x:x + win[2]] = True
    assert covered.all()
    for n, w, s in zip(shape, win, starts, strict=True):
        assert w % multiple == 0 and all(v % multiple == 0 and v + w <= n for v in s)
        assert w >= min(n, min_size) or math.prod(win) > max_voxels
    fits = math.prod(win) <= max_voxels
    assert fits == (shape != (24, 40, 56))
    if cap:
        assert all(w <= c for w, c in zip(win, cap, strict=True))
    if shape == (184, 136, 184) and cap is None:  # 2 slabs: 5.4 M voxels computed, not 8 cubes of 128 (16.8 M)
        assert math.prod(len(s) for s in starts) * math.prod(win) < 6e6


def test_sub_voxel_head_puts_each_logit_where_its_index_says():
    """Block s = (a*fy + b)*fx + e of forward_blocks is output voxel (d*fz + a, h*fy + b, w*fx + e), for every s
    (distinct factors, so a swapped axis or order fails); space_to_depth is the same map for targets;
    config.json's list becomes a tuple; bad factors are refused."""
    from predictor.network import UNet3D, UNetConfig, depth_to_space, space_to_depth

    up = (2, 3, 4)
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(classes=3, base=4, levels=2, upsample=list(up))).eval()
    assert net.config.upsample == up
    x = torch.randn(1, 1, 4, 6, 8)
    with torch.no_grad():
        blocks, full = net.forward_blocks(x), net(x)
    assert blocks.shape == (1, 3, 24, 4, 6, 8) and full.shape == (1, 3, 8, 18, 32)
    labels = torch.randint(0, 3, (2, 8, 18, 32))
    target = space_to_depth(labels, up)
    for s in range(24):
        a, b, e = np.unravel_index(s, up)
        assert torch.equal(blocks[:, :, s], full[:, :, a::2, b::3, e::4])
        assert torch.equal(target[:, s], labels[:, a::2, b::3, e::4])
    assert torch.equal(depth_to_space(target[:, None], up)[:, 0], labels)
    for bad in ((1, 0, 2), (1, 1.5, 1)):
        with pytest.raises(ValueError, match="upsample"):
            UNetConfig(classes=3, upsample=bad)


def test_sub_voxel_labels_match_the_network_one_pass_and_by_sliding_window():
    """A fine network with upsample (1, 2, 2): stage 2 returns labels on the finer grid, the argmax of the shuffled
    logits in one pass, and of the averaged softmax of overlapping windows, each placed at its offset times the
    factors; predict() keeps the input's shape."""
    from predictor.network import UNet3D, UNetConfig
    from predictor.pipeline import PipelineConfig, pad_to_multiple, tile_windows, with_coords

    torch.manual_seed(0)
    coarse = UNet3D(UNetConfig(classes=2, base=4, levels=2))
    fine = UNet3D(UNetConfig(classes=14, base=4, levels=2, coords=True, upsample=(1, 2, 2))).eval()
    x = torch.randn(10, 14, 17)
    cpu = torch.device("cpu")
    one = Predictor(coarse, fine, PipelineConfig(fine_scales=(1.0,)), cpu)
    windowed = Predictor(coarse, fine, PipelineConfig(one_pass_voxels=10, window=(4, 6, 8), min_window=4,
                                                      overlap=0.5), cpu)
    with torch.inference_mode():
        a, b = one._segment(fine, x), windowed._segment(fine, x)
        pa, pb = one._probabilities(fine, x), windowed._probabilities(fine, x)
        padded, _ = pad_to_multiple(with_coords(x), 2, -1.0)  # (4, 10, 14, 18)
        logits = fine(padded[None])[0]
        expected = logits.argmax(0)[:10, :28, :34].to(torch.uint8)
        prob, count = torch.zeros(14, 10, 28, 36), torch.zeros(10, 28, 36)
        (a_, b_, c_), starts = tile_windows((10, 14, 18), 2, 10 // 4, 0.5, 4, (4, 6, 8))
        assert (a_, b_, c_) == (4, 4, 4) and len(starts[1]) > 1  # nothing fits 10 // 4 voxels: the smallest
        for z, y, w in itertools.product(*starts):
            p = fine(padded[None, :, z:z + a_, y:y + b_, w:w + c_])[0].softmax(0)
            prob[:, z:z + a_, 2 * y:2 * y + 2 * b_, 2 * w:2 * w + 2 * c_] += p
            count[z:z + a_, 2 * y:2 * y + 2 * b_, 2 * w:2 * w + 2 * c_] += 1
        by_window = prob.argmax(0)[:10, :28, :34].to(torch.uint8)
    assert a.shape == (10, 28, 34) and torch.equal(a, expected)
    assert torch.equal(b, by_window) and not torch.equal(by_window, expected)  # the windows really differ
    assert pa.shape == pb.shape == (14, 10, 28, 34)
    torch.testing.assert_close(pa, logits.softmax(0)[:, :10, :28, :34])
    torch.testing.assert_close(pb, (prob / count)[:, :10, :28, :34])
    with torch.no_grad():
        coarse.head.bias.copy_(torch.tensor([-10.0, 10.0]))  # stage 1 marks everything: the ROI is the volume
    image = np.random.default_rng(0).normal(0, 50, (20, 30, 40)).astype(np.float32)
    nearest = Predictor(coarse, fine, PipelineConfig(resample="nearest", fine_scales=(1.0,)), cpu)
    for model in (one, nearest):
        labels, timings = model.predict(image, (2.5, 0.8, 0.8))
        # fine grid 25 x 12 x 16 voxels of 2 mm; labels on 25 x 24 x 32
        assert labels.shape == image.shape and timings.roi_fine_shape == (25, 24, 32)
        assert labels.dtype == np.uint8 and labels.max() <= 13


def test_fine_scales_average_the_probabilities_on_the_first_grid():
    """fine_scales (1.0, 2.0): the ROI at 2 mm and at 4 mm, the 4 mm probabilities resized trilinearly onto the
    2 mm grid, the mean of both; its argmax are the labels. Bad scales are refused."""
    from predictor.network import UNet3D, UNetConfig
    from predictor.pipeline import PipelineConfig

    torch.manual_seed(1)
    coarse = UNet3D(UNetConfig(classes=2, base=4, levels=2))
    fine = UNet3D(UNetConfig(classes=14, base=4, levels=2, coords=True)).eval()
    cpu = torch.device("cpu")
    model = Predictor(coarse, fine, PipelineConfig(fine_scales=(1.0, 2.0)), cpu)
    single = Predictor(coarse, fine, PipelineConfig(fine_scales=(1.0,)), cpu)
    crop = torch.randn(16, 20, 24)
    with torch.inference_mode():
        labels, prob = model._fine_stage(crop, (2.0, 2.0, 2.0))
        p1 = single._probabilities(fine, crop)
        p2 = single._probabilities(fine, resize_image(crop, (8, 10, 12)))
    expected = (p1 + torch.nn.functional.interpolate(p2[None], size=(16, 20, 24), mode="trilinear")[0]) / 2
    torch.testing.assert_close(prob, expected)
    assert torch.equal(labels, expected.argmax(0).to(torch.uint8)) and not torch.allclose(prob, p1)
    for bad in ((), (1.0, 0.0)):
        with pytest.raises(ValueError, match="fine_scales"):
            PipelineConfig(fine_scales=bad)


def test_gpu_benchmark_script_runs_end_to_end_in_its_cpu_smoke_mode():
    """benchmarks/predictor_gpu_bench.py can only give its figures on a CUDA machine, which CI lacks; its
    --device cpu mode runs the same code path (phantom in memory, warm runs, DSC, emulated I/O) so the script
    does not rot before a GPU is lent."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "predictor_gpu_bench.py"
    proc = subprocess.run([sys.executable, str(script), "--device", "cpu", "--runs", "1", "--shape", "96", "96", "48"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "smoke run" in proc.stdout
    rows = {line[:34].strip(): line[34:].split()[0] for line in proc.stdout.splitlines() if line[34:].strip()}
    assert float(rows["compute end to end s"]) > 0
    assert 0.3 < float(rows["mean DSC vs phantom labels"]) <= 1.0  # a 96x96x48 phantom: coarse, but organs found
    assert rows["peak GPU MiB (NVML, process)"] == "nan"
