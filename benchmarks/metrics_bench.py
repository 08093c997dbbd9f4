"""Benchmark: the evaluator against a faithful port of the official FLARE22 scorer, per kind of prediction.

One 512 x 512 x 100 ground truth with the 13 organs (a phantom from ``phantoms.generate_case``, or with
``--source blobs`` a home-made one) and one prediction per case type, all written as .nii.gz:

- ``typical``: local boundary errors only: per organ a one-voxel erosion or dilation (in-plane or 3D) or
  none, and a few small cubes flipped on its boundary;
- ``missed``: the typical prediction without the gallbladder and the right adrenal gland;
- ``far``: per-organ shifts, erosion and dilation, the left adrenal dropped, and false-positive blobs far
  from the organs (spleen, gallbladder), which blow up the official per-organ bounding box;
- ``empty``: no label at all.

Each implementation scores the *files* (read + all 26 numbers), one case at a time, in this process,
the runs of the three interleaved so that load on the host hits them alike (after one untimed
evaluator run per type, so that one-time tables are not timed):

- evaluator: ``evaluator.scoring.score_case(..., threads=1)``, one core (what each worker of
  ``score_folder`` runs; with ``--workers 1`` its rarely used KD-tree may use every core);
- official: ``tests/reference_flare22.reference_case`` (nibabel ``get_fdata``, then the official
  per-organ loop over DeepMind's algorithm: correlate, EDT of the union-bbox crop, no shortcuts);
- floor: the evaluator's own reads of both files (header checks, inflation, label check), nothing else.

Prints per type the medians, the ratio official / evaluator, evaluator / floor and the largest
|difference| over the 26 numbers (the run fails if one exceeds 1e-12), then the peak memory of the
typical case (a fresh process per implementation, VmHWM) and, with ``--profile``, where the
evaluator's time goes on the typical case (cProfile, per call).

    python benchmarks/metrics_bench.py --runs 15 --reference-runs 3 --profile   # the figures in docs/metrics.md
    python benchmarks/metrics_bench.py                          # 7 evaluator runs, 3 official runs per type
    python benchmarks/metrics_bench.py --types typical --runs 15 --reference-runs 2 --profile
    python benchmarks/metrics_bench.py --source blobs
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from challenge.labels import BY_SHORT, ORGANS  # noqa: E402
from challenge.nifti import Geometry, read_header, read_labels, write_label  # noqa: E402

SHAPE_IJK = (512, 512, 100)
SPACING_IJK = (0.78, 0.78, 2.5)
TYPES = ("typical", "missed", "far", "empty")
TOLERANCE = 1e-12  # largest |evaluator - official| allowed over the 26 numbers


# --- the ground truth -------------------------------------------------------------------------------------------

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


# --- the predictions, one per case type ---------------------------------------------------------------------------

def _structures() -> tuple[np.ndarray, np.ndarray]:
    """The 6-neighbour ball and its in-plane (one-slice) version."""
    ball = ndimage.generate_binary_structure(3, 1)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return ball, in_plane


def local_errors(gt: np.ndarray, seed: int, flips: int = 6) -> np.ndarray:
    """The typical prediction: per organ a one-voxel erosion, dilation (in-plane or 3D, drawn) or nothing,
    then ``flips`` cubes of side 3 or 5 voxels centred on its boundary set to the organ or cleared. Organs
    are painted in label order onto background only. Works in each organ's box plus 3 voxels."""
    rng = np.random.default_rng(seed + 2)
    ball, in_plane = _structures()
    pred = np.zeros_like(gt)
    boxes = ndimage.find_objects(gt, max_label=max(o.id for o in ORGANS))
    for organ in ORGANS:
        box = boxes[organ.id - 1]
        if box is None:
            continue
        box = tuple(slice(max(s.start - 3, 0), min(s.stop + 3, n)) for s, n in zip(box, gt.shape, strict=True))
        mask = gt[box] == organ.id
        kind, structure = rng.choice(["erode", "dilate", "keep"]), ball if rng.random() < 0.5 else in_plane
        if kind == "erode":
            mask = ndimage.binary_erosion(mask, structure)
        elif kind == "dilate":
            mask = ndimage.binary_dilation(mask, structure)
        edge = np.argwhere(mask & ~ndimage.binary_erosion(mask, ball))
        for _ in range(flips if len(edge) else 0):
            centre, half = edge[rng.integers(len(edge))], int(rng.integers(1, 3))
            mask[tuple(slice(max(int(c) - half, 0), int(c) + half + 1) for c in centre)] = rng.random() < 0.5
        view = pred[box]
        view[mask & (view == 0)] = organ.id
    return pred


def missed_organs(gt: np.ndarray, seed: int, missed: tuple[str, ...] = ("Gallbladder", "RAG")) -> np.ndarray:
    """The typical prediction without the organs ``missed``."""
    pred = local_errors(gt, seed)
    pred[np.isin(pred, [BY_SHORT[name].id for name in missed])] = 0
    return pred


def far_false_positives(gt: np.ndarray, seed: int) -> np.ndarray:
    """Per-organ shifts, erosion and dilation, LAG dropped, and far-away false-positive blobs (spleen,
    gallbladder) near the volume's corner: the benchmark's pair until 2026-11-30."""
    rng = np.random.default_rng(seed + 1)
    pred = np.zeros_like(gt)
    ball, in_plane = _structures()
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


def prediction(kind: str, gt: np.ndarray, seed: int) -> np.ndarray:
    """The prediction of case type ``kind`` (see the module docstring) for ``gt``, (k, j, i) uint8."""
    if kind == "typical":
        return local_errors(gt, seed)
    if kind == "missed":
        return missed_organs(gt, seed)
    if kind == "far":
        return far_false_positives(gt, seed)
    if kind == "empty":
        return np.zeros_like(gt)
    raise ValueError(f"unknown case type {kind!r}")


# --- timing ----------------------------------------------------------------------------------------------------

def read_floor(gt_path: Path, pred_path: Path) -> None:
    """The reads ``score_case`` does and nothing else: both headers, both label arrays, both geometries."""
    gt_header = read_header(gt_path)
    read_labels(gt_path, gt_header.shape)
    read_header(pred_path).geometry()
    read_labels(pred_path, gt_header.geometry())


def interleaved(calls: dict[str, tuple[Callable[[], object], int]]) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Run each call its number of times, round-robin (one run of each per round while it has runs left);
    returns the times (s) and the last result of each."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    results: dict[str, object] = {}
    for round_ in range(max(runs for _, runs in calls.values())):
        for name, (call, runs) in calls.items():
            if round_ < runs:
                start = time.perf_counter()
                results[name] = call()
                times[name].append(time.perf_counter() - start)
    return times, results


def largest_difference(ours, ref: dict[str, float]) -> float:
    """Largest |evaluator - official| over the 26 numbers (both NaN counts as equal)."""
    worst = 0.0
    for organ in ORGANS:
        for metric, values in (("DSC", ours.dsc), ("NSD", ours.nsd)):
            a, b = values[organ.short], ref[f"{organ.short}_{metric}"]
            if math.isnan(a) != math.isnan(b):
                return math.inf
            if not math.isnan(a):
                worst = max(worst, abs(a - b))
    return worst


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


def profile(call: Callable[[], object], runs: int, top: int = 18) -> None:
    """Print the evaluator's functions (and the readers') by cumulative time per call, from cProfile."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        call()
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(part in path for part in ("/evaluator/", "/challenge/")):
            rows.append((cumulative / runs, own / runs, calls / runs, f"{Path(path).parent.name}/{Path(path).name}"
                         f":{line}({name})"))
    print(f"\nprofile of the evaluator on the typical case (cProfile, {runs} runs, per case; cProfile adds overhead):")
    print(f"  {'cumulative ms':>13} {'own ms':>8} {'calls':>7}  function")
    for cumulative, own, calls, where in sorted(rows, reverse=True)[:top]:
        print(f"  {cumulative * 1e3:13.1f} {own * 1e3:8.1f} {calls:7.0f}  {where}")


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
    parser.add_argument("--types", nargs="+", choices=TYPES, default=list(TYPES), help="case types to run")
    parser.add_argument("--runs", type=int, default=7, help="evaluator and floor runs per type (median quoted)")
    parser.add_argument("--reference-runs", type=int, default=3, help="official runs per type (a few s each)")
    parser.add_argument("--profile", action="store_true", help="also profile the evaluator on the typical case")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--keep", type=Path, help="write the files here instead of a temporary folder")
    args = parser.parse_args(argv)

    from evaluator.scoring import score_case
    from tests.reference_flare22 import reference_case

    print(f"machine: {machine()}")
    gt, geometry = phantom_gt(args.seed) if args.source == "phantom" else blob_gt(args.seed)
    rows, worst_all = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        gt_path = folder / "gt" / "Bench.nii.gz"
        write_label(gt, geometry, gt_path)
        print(f"GT: {args.source}, shape (i, j, k) {geometry.size}, spacing {geometry.spacing} mm, organs "
              f"{sorted(set(np.unique(gt).tolist()) - {0})}, {gt_path.stat().st_size // 1024} KiB")
        paths = {}
        for kind in args.types:
            paths[kind] = write_label(prediction(kind, gt, args.seed), geometry, folder / kind / "Bench.nii.gz")
        del gt
        for kind, pred_path in paths.items():
            score_case(gt_path, pred_path, threads=1)  # warm-up: one-time tables and caches are not timed
            times, results = interleaved({
                "floor": (lambda p=pred_path: read_floor(gt_path, p), args.runs),
                "evaluator": (lambda p=pred_path: score_case(gt_path, p, threads=1), args.runs),
                "official": (lambda p=pred_path: reference_case(gt_path, p), args.reference_runs)})
            medians = {name: statistics.median(runs) for name, runs in times.items()}
            worst = largest_difference(results["evaluator"], results["official"])  # type: ignore[arg-type]
            worst_all = max(worst_all, worst)
            rows.append((kind, medians, worst, times))
            print(f"{kind}: status {results['evaluator'].status}, "  # type: ignore[attr-defined]
                  f"{pred_path.stat().st_size // 1024} KiB")

        print("\nper case (read both files + 26 numbers), median of runs:")
        print(f"  {'type':<8} {'evaluator s':>11} {'official s':>10} {'ratio':>7} {'floor s':>8} {'eval/floor':>10} "
              f"{'max |diff|':>10}")
        for kind, medians, worst, _ in rows:
            print(f"  {kind:<8} {medians['evaluator']:11.3f} {medians['official']:10.3f} "
                  f"{medians['official'] / medians['evaluator']:6.1f}x {medians['floor']:8.3f} "
                  f"{medians['evaluator'] / medians['floor']:9.2f}x {worst:10.1e}")
        print("runs (s):")
        for kind, _, _, times in rows:
            print(f"  {kind}: " + "; ".join(f"{name} " + ", ".join(f"{t:.3f}" for t in runs)
                                           for name, runs in times.items()))
        print(f"largest |difference| over all types and the 26 numbers: {worst_all:.2e} (allowed {TOLERANCE:.0e})")

        typical = paths.get("typical")
        if typical is not None and not args.no_memory:
            setup = "from evaluator.scoring import score_case"
            mem_fast = peak_memory(setup, f"score_case({str(gt_path)!r}, {str(typical)!r}, threads=1)")
            mem_ref = peak_memory("from tests.reference_flare22 import reference_case",
                                  f"reference_case({str(gt_path)!r}, {str(typical)!r})")
            mem_floor = peak_memory("from benchmarks.metrics_bench import read_floor; from pathlib import Path",
                                    f"read_floor(Path({str(gt_path)!r}), Path({str(typical)!r}))")
            print(f"\npeak memory, typical case (fresh process, VmHWM, MiB): evaluator {mem_fast['peak_mib']:.0f} "
                  f"(after imports {mem_fast['after_imports_mib']:.0f}), official {mem_ref['peak_mib']:.0f}, "
                  f"read-only floor {mem_floor['peak_mib']:.0f}")
        if typical is not None and args.profile:
            profile(lambda: score_case(gt_path, typical, threads=1), args.runs)
    return 0 if worst_all <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
