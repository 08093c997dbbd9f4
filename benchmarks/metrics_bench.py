"""Benchmark: the evaluator against a faithful port of the official FLARE22 scorer, on one case pair.

The pair: a 512 x 512 x 100 label map with the 13 organs (a phantom from ``phantoms.generate_case``,
or with ``--source blobs`` a home-made one) and a realistic perturbation of it: shifts, erosion and
dilation, a dropped organ (LAG), far-away false-positive blobs (spleen, gallbladder). Both are written
as .nii.gz, then each implementation scores the *files* (read + all 26 numbers), one case, one
process (the evaluator's KD-tree may use every core, as ``--workers 1`` does):

- evaluator: ``evaluator.scoring.score_case`` (SimpleITK read, gzip integrity check, fast metrics);
- reference: ``tests/reference_flare22.reference_case`` (nibabel ``get_fdata``, then the official
  per-organ loop over DeepMind's algorithm: correlate, EDT of the union-bbox crop, no shortcuts);
- floor: reading both files into arrays (SimpleITK), nothing else.

Prints medians of several runs, the per-case speed ratio, the largest |difference| per organ, the
peak memory (a fresh process per implementation, VmHWM) and the machine it ran on.

    python benchmarks/metrics_bench.py                # phantom pair, 5 evaluator runs, 3 reference runs
    python benchmarks/metrics_bench.py --source blobs --runs 7 --reference-runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from challenge.labels import BY_SHORT, ORGANS  # noqa: E402
from challenge.nifti import Geometry, read_image, write_label  # noqa: E402

SHAPE_IJK = (512, 512, 100)
SPACING_IJK = (0.78, 0.78, 2.5)


# --- the case pair -------------------------------------------------------------------------------------------

def phantom_gt(seed: int) -> tuple[np.ndarray, Geometry]:
    from phantoms import generate_case
    from phantoms.generate import PhantomConfig

    phantom = generate_case(seed, 0, PhantomConfig(shape=SHAPE_IJK, spacing=SPACING_IJK, orientation="LPS"))
    return phantom.labels, phantom.geometry


def blob_gt(seed: int) -> tuple[np.ndarray, Geometry]:
    """Ellipsoids for the solid organs, slanted cylinders for the aorta, IVC and esophagus; (k, j, i)."""
    rng = np.random.default_rng(seed)
    nk, nj, ni = SHAPE_IJK[::-1]
    k, j, i = np.ogrid[:nk, :nj, :ni]
    labels = np.zeros((nk, nj, ni), np.uint8)
    # centre (k, j, i) and radii (k, j, i) in voxels, roughly where the organs sit on a 400 mm FOV
    solids = {"Liver": ((50, 230, 160), (30, 95, 95)), "RK": ((45, 300, 170), (20, 30, 26)),
              "Spleen": ((60, 280, 360), (18, 55, 35)), "Pancreas": ((45, 250, 270), (8, 20, 70)),
              "RAG": ((70, 290, 200), (5, 8, 6)), "LAG": ((70, 290, 320), (4, 7, 6)),
              "Gallbladder": ((40, 210, 180), (12, 20, 18)), "Stomach": ((60, 200, 320), (20, 55, 55)),
              "Duodenum": ((35, 250, 220), (12, 25, 20)), "LK": ((45, 300, 345), (20, 30, 26))}
    for name, (centre, radii) in solids.items():
        noise = rng.uniform(0.9, 1.1, 3)
        inside = sum(((c - m) / (r * f)) ** 2 for c, m, r, f in zip((k, j, i), centre, radii, noise, strict=True)) <= 1
        labels[inside] = BY_SHORT[name].id
    tubes = {"Aorta": ((0, 92), 300, 255, 12), "IVC": ((5, 90), 290, 225, 10), "Esophagus": ((60, 100), 270, 270, 6)}
    for name, ((k0, k1), cj, ci, radius) in tubes.items():
        for z in range(k0, k1):
            drift = 0.1 * (z - k0)
            disc = (j[0] - cj - drift) ** 2 + (i[0] - ci + drift / 2) ** 2 <= radius ** 2
            labels[z][disc] = BY_SHORT[name].id
    geometry = Geometry(SHAPE_IJK, SPACING_IJK, (-200.0, -200.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return labels, geometry


def perturb(gt: np.ndarray, seed: int) -> np.ndarray:
    """A realistic prediction: per-organ shifts, erosion/dilation, LAG dropped, far false positives."""
    rng = np.random.default_rng(seed + 1)
    pred = np.zeros_like(gt)
    ball = ndimage.generate_binary_structure(3, 1)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    edits = {"Liver": ("shift", (0, 1, 2)), "RK": ("dilate", ball), "Spleen": ("erode", ball),
             "Pancreas": ("shift_erode", (1, -1, 1)), "Aorta": ("shift", (0, 0, 1)), "IVC": ("dilate", in_plane),
             "RAG": ("shift", (0, 1, 1)), "LAG": ("drop", None), "Gallbladder": ("erode", in_plane),
             "Esophagus": ("shift", (0, 2, 0)), "Stomach": ("shift", (1, 0, -1)), "Duodenum": ("dilate", ball),
             "LK": ("keep", None)}
    for organ in ORGANS:
        kind, arg = edits[organ.short]
        mask = gt == organ.id
        if kind == "drop":
            continue
        if kind in ("shift", "shift_erode"):
            mask = np.roll(mask, arg, axis=(0, 1, 2))
        if kind in ("erode", "shift_erode"):
            mask = ndimage.binary_erosion(mask, ball if arg is None or kind == "shift_erode" else arg)
        if kind == "dilate":
            mask = ndimage.binary_dilation(mask, arg)
        pred[mask & (pred == 0)] = organ.id
    nk, nj, ni = gt.shape
    for label, radius in ((BY_SHORT["Spleen"].id, 8), (BY_SHORT["Gallbladder"].id, 2)):
        centre = (int(rng.integers(5, 15)), int(rng.integers(20, 60)), int(rng.integers(20, 60)))
        k, j, i = np.ogrid[:nk, :nj, :ni]
        pred[((k - centre[0]) * 2.5) ** 2 + ((j - centre[1]) * 0.78) ** 2 + ((i - centre[2]) * 0.78) ** 2
             <= (radius * 2.5) ** 2] = label
    return pred


# --- timing ----------------------------------------------------------------------------------------------------

def timed(call, runs: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


PEAK_SNIPPET = """
import json, sys, resource
sys.path.insert(0, {root!r})
{setup}
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) / 1024
base = hwm()
{call}
print(json.dumps({{"peak_mib": hwm(), "after_imports_mib": base}}))
"""


def peak_memory(setup: str, call: str) -> dict:
    """Peak resident memory (MiB, VmHWM) of a fresh process that runs ``call`` once."""
    code = PEAK_SNIPPET.format(root=str(ROOT), setup=setup, call=call)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    import scipy
    import SimpleITK

    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, "
            f"numpy {np.__version__}, scipy {scipy.__version__}, SimpleITK {SimpleITK.Version_VersionString()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("phantom", "blobs"), default="phantom",
                        help="GT from phantoms.generate_case (default) or the built-in blob generator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=5, help="evaluator and floor runs (median quoted)")
    parser.add_argument("--reference-runs", type=int, default=3, help="reference runs (about 10 s each)")
    parser.add_argument("--keep", type=Path, help="write the pair here instead of a temporary folder")
    args = parser.parse_args(argv)

    from evaluator.scoring import score_case
    from tests.reference_flare22 import reference_case

    print(f"machine: {machine()}")
    gt, geometry = phantom_gt(args.seed) if args.source == "phantom" else blob_gt(args.seed)
    pred = perturb(gt, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        gt_path, pred_path = folder / "gt" / "Bench.nii.gz", folder / "pred" / "Bench.nii.gz"
        write_label(gt, geometry, gt_path)
        write_label(pred, geometry, pred_path)
        print(f"pair: {args.source}, shape (i, j, k) {geometry.size}, spacing {geometry.spacing} mm, "
              f"GT organs {sorted(set(np.unique(gt).tolist()) - {0})}, files "
              f"{gt_path.stat().st_size // 1024} + {pred_path.stat().st_size // 1024} KiB")
        del gt, pred

        floor, floor_runs, _ = timed(lambda: (read_image(gt_path), read_image(pred_path)), args.runs)
        fast, fast_runs, ours = timed(lambda: score_case(gt_path, pred_path, threads=-1), args.runs)
        fast1, fast1_runs, _ = timed(lambda: score_case(gt_path, pred_path, threads=1), args.runs)
        slow, slow_runs, ref = timed(lambda: reference_case(gt_path, pred_path), args.reference_runs)
        setup = "from evaluator.scoring import score_case"
        mem_fast = peak_memory(setup, f"score_case({str(gt_path)!r}, {str(pred_path)!r}, threads=-1)")
        mem_ref = peak_memory("from tests.reference_flare22 import reference_case",
                              f"reference_case({str(gt_path)!r}, {str(pred_path)!r})")
        mem_floor = peak_memory("from challenge.nifti import read_image",
                                f"a = read_image({str(gt_path)!r}); b = read_image({str(pred_path)!r})")

    print(f"\nstatus: {ours.status}")
    print(f"{'organ':<12} {'DSC':>10} {'NSD':>10} {'|dDSC|':>9} {'|dNSD|':>9}")
    worst = 0.0
    for organ in ORGANS:
        d_dsc = abs(ours.dsc[organ.short] - ref[f"{organ.short}_DSC"])
        d_nsd = abs(ours.nsd[organ.short] - ref[f"{organ.short}_NSD"])
        worst = max(worst, d_dsc, d_nsd)
        print(f"{organ.short:<12} {ours.dsc[organ.short]:10.6f} {ours.nsd[organ.short]:10.6f} "
              f"{d_dsc:9.1e} {d_nsd:9.1e}")
    print(f"largest |difference| over the 26 numbers: {worst:.2e}")

    def fmt(runs: list[float]) -> str:
        return ", ".join(f"{t:.3f}" for t in runs)

    print("\nper case (read both files + 26 numbers), median of runs, s:")
    print(f"  floor (read both files only)     {floor:8.3f}   runs: {fmt(floor_runs)}")
    print(f"  evaluator, KD-tree on all cores  {fast:8.3f}   runs: {fmt(fast_runs)}")
    print(f"  evaluator, one thread            {fast1:8.3f}   runs: {fmt(fast1_runs)}")
    print(f"  reference (official algorithm)   {slow:8.3f}   runs: {fmt(slow_runs)}")
    print(f"ratio reference / evaluator: {slow / fast:.1f}x (all cores), {slow / fast1:.1f}x (one thread)")
    print(f"evaluator / floor: {fast / floor:.1f}x the time it takes just to read the two files")
    print(f"\npeak memory (fresh process, VmHWM, MiB): evaluator {mem_fast['peak_mib']:.0f} "
          f"(after imports {mem_fast['after_imports_mib']:.0f}), reference {mem_ref['peak_mib']:.0f}, "
          f"read-only floor {mem_floor['peak_mib']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
