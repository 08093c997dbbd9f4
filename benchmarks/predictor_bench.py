"""CPU benchmark of the predictor: per-case time split (read, stage 1, stage 2, resample, write) on a
512x512x100 phantom in a warm process, and accuracy (DSC) on held-out phantoms.

DSC here is this script's own: per organ present in the ground truth, 2|P&G| / (|P|+|G|), then the
mean over those organs and cases (the evaluator package's scorer is not used).
Held-out phantoms use --seed 2000 (the shipped weights were trained on --seed 1000 cases).
``grid_ceiling`` is what a perfect fine network would score: the true labels taken to the fine network's
output grid (fine_mm, divided per axis by its ``upsample`` factors) and back with nearest neighbour, as the
pipeline takes its predictions.

    python benchmarks/predictor_bench.py                      # 3 timing runs, 5 held-out cases
    python benchmarks/predictor_bench.py --runs 5 --threads 2 --cases 8 --fine-mm 2.0 2.5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from challenge.labels import ORGANS
from challenge.nifti import read_image, write_label
from phantoms.generate import PhantomConfig, generate_case, write_case
from predictor.network import upsampled_shape
from predictor.orientation import Reorientation
from predictor.pipeline import Predictor
from predictor.resample import resize_labels, size_for_spacing

STEPS = ("read", "stage1", "stage2", "resample", "write", "total")


def mean_dsc(gt: np.ndarray, pred: np.ndarray) -> tuple[float, dict[int, float]]:
    per = {}
    for organ in range(1, 14):
        g, p = gt == organ, pred == organ
        if g.any():
            per[organ] = float(2 * (g & p).sum() / (g.sum() + p.sum()))
    return float(np.mean(list(per.values()))), per


def grid_ceiling(labels: np.ndarray, spacing_kji: tuple[float, ...], direction: tuple[float, ...],
                 fine_mm: float, upsample: tuple[int, int, int] = (1, 1, 1)) -> float:
    """Mean DSC of the true labels after the pipeline's own round trip: canonical axes, nearest-neighbour
    to the fine network's output grid (``fine_mm`` voxels times ``upsample`` sub-voxels, canonical S-I,
    A-P, R-L) over the whole volume, and back. A perfect fine network scores about this (the ROI crop
    changes the grid's phase a little), so it is the ceiling that the fine network's output grid sets."""
    reo = Reorientation.from_direction(direction)
    y = reo.forward(torch.from_numpy(labels.astype(np.uint8)))
    fine = size_for_spacing(tuple(y.shape), reo.spacing(spacing_kji), (fine_mm,) * 3)
    small = resize_labels(y, upsampled_shape(fine, upsample))
    back = reo.inverse(resize_labels(small, tuple(y.shape))).numpy()
    return mean_dsc(labels, back)[0]


def time_case(model: Predictor, image_path: Path, out: Path) -> dict[str, float]:
    t = {}
    clock = time.perf_counter()
    image, geo = read_image(image_path)
    t["read"] = time.perf_counter() - clock
    labels, timings = model.predict(image, geo.spacing_kji, geo.direction)
    t.update(stage1=timings.stage1, stage2=timings.stage2, resample=timings.resample)
    clock = time.perf_counter()
    write_label(labels, geo, out)
    t["write"] = time.perf_counter() - clock
    t["total"] = sum(t[s] for s in STEPS[:-1])
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cases", type=int, default=5, help="held-out phantoms for DSC (0 skips)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fine-mm", type=float, nargs="+", default=[2.0], help="fine spacings to compare")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--seed", type=int, default=2000,
                   help="phantom seed of the held-out cases (default 2000; the shipped weights trained on 1000)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = Predictor.load(args.weights, device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="predictor_bench_"))
    big = generate_case(seed=2000, index=99, config=PhantomConfig(shape=(512, 512, 100), prefix="Big"))
    image_path, _ = write_case(big, tmp / "big")
    held = [generate_case(seed=args.seed, index=i, config=PhantomConfig(domain="mixed")) for i in range(args.cases)]

    rows = []
    for fine_mm in args.fine_mm:
        model = base
        model.config = replace(base.config, fine_mm=fine_mm)
        time_case(model, image_path, tmp / "warmup.nii.gz")  # warm-up: allocator, oneDNN kernels
        runs = [time_case(model, image_path, tmp / "out.nii.gz") for _ in range(args.runs)]
        med = {s: statistics.median(r[s] for r in runs) for s in STEPS}
        dscs, organs, ceiling = [], {}, []
        for case in held:
            ceiling.append(grid_ceiling(case.labels, case.geometry.spacing_kji, case.geometry.direction, fine_mm,
                                        model.fine.config.upsample))
            labels, _ = model.predict(case.image, case.geometry.spacing_kji, case.geometry.direction)
            dsc, per = mean_dsc(case.labels, labels)
            dscs.append(dsc)
            for organ, value in per.items():
                organs.setdefault(organ, []).append(value)
        rows.append((fine_mm, med, float(np.mean(dscs)) if dscs else float("nan"), dscs,
                     float(np.mean(ceiling)) if ceiling else float("nan")))
        if organs:
            print(f"fine {fine_mm:g} mm, per-organ DSC (mean over the cases that have it): "
                  + ", ".join(f"{ORGANS[o - 1].short} {np.mean(v):.3f}" for o, v in sorted(organs.items())))

    print(f"\npredictor CPU benchmark: {args.threads} threads, 512x512x100 phantom, median of {args.runs} runs, "
          f"DSC over {args.cases} held-out phantoms (seed {args.seed}, mixed domains)")
    print("grid_ceiling: mean DSC of the true labels resampled to the fine network's output grid "
          f"(fine_mm / {'x'.join(map(str, base.fine.config.upsample))}) and back (nearest neighbour)")
    print("fine_mm  " + "  ".join(f"{s:>8}" for s in STEPS) + "   mean_DSC  min_case_DSC  grid_ceiling  total/first")
    first = rows[0][1]["total"]
    for fine_mm, med, dsc, dscs, ceiling in rows:
        print(f"{fine_mm:7.2f}  " + "  ".join(f"{med[s]:8.2f}" for s in STEPS)
              + f"   {dsc:8.4f}  {min(dscs) if dscs else float('nan'):12.4f}  {ceiling:12.4f}"
              + f"  {med['total'] / first:11.2f}")


if __name__ == "__main__":
    main()
