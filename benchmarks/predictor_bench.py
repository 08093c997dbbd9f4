"""CPU benchmark of the predictor: per-case time split (read, stage 1, stage 2, resample, write) on a
512x512x100 phantom in a warm process, and accuracy (DSC) on held-out phantoms.

DSC here is this script's own: per organ present in the ground truth, 2|P&G| / (|P|+|G|), then the
mean over those organs and cases (the evaluator package's scorer is not used).
Held-out phantoms use --seed 2000 (the shipped weights were trained on --seed 1000 cases); several seeds
(--seed 2000 3000 4000) give --count of each and a column per seed.
``grid_ceiling`` is what a perfect but certain fine network would score: the true labels taken to the fine
network's output grid (fine_mm, divided per axis by its ``upsample`` factors) by nearest neighbour and back
as the pipeline takes its predictions back (``--resample``: nearest-neighbour labels, or one-hot
probabilities resized trilinearly). A network's soft probabilities at boundaries can beat it.

Each (fine_mm, fine_scales, resample) setting is one row; the last column is its time relative to the first
row. ``fine_scales`` (comma-separated factors): stage 2 at fine_mm times each, probabilities averaged.
``read`` is ``read_image`` of the CT (.nii.gz, as ``phantoms.write_case`` writes it), ``write`` is ``write_label``
of the prediction, both with challenge.codec's active codec (named in the report; ``FLARE_CODEC=zlib`` gives
the zlib figures; ``benchmarks/codec_bench.py --tables nifti`` puts the codecs side by side).

    python benchmarks/predictor_bench.py                      # 3 timing runs, 5 held-out cases, both resamplings
    python benchmarks/predictor_bench.py --runs 3 --count 16 --seed 2000 3000 4000 --fine-scales 0.95,1.05 1 \
        --resample probabilities nearest
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from challenge import codec
from challenge.labels import NUM_CLASSES, ORGANS
from challenge.nifti import read_image, write_label
from phantoms.generate import PhantomConfig, generate_case, write_case
from predictor.network import upsampled_shape
from predictor.orientation import Reorientation
from predictor.pipeline import RESAMPLE_MODES, PipelineConfig, Predictor
from predictor.resample import resize_labels, resize_probabilities, size_for_spacing

STEPS = ("read", "stage1", "stage2", "resample", "write", "total")


def mean_dsc(gt: np.ndarray, pred: np.ndarray) -> tuple[float, dict[int, float]]:
    per = {}
    for organ in range(1, 14):
        g, p = gt == organ, pred == organ
        if g.any():
            per[organ] = float(2 * (g & p).sum() / (g.sum() + p.sum()))
    return float(np.mean(list(per.values()))), per


def grid_ceiling(labels: np.ndarray, spacing_kji: tuple[float, ...], direction: tuple[float, ...],
                 fine_mm: float, upsample: tuple[int, int, int] = (1, 1, 1), resample: str = "nearest") -> float:
    """Mean DSC of the true labels after the pipeline's own round trip: canonical axes, nearest-neighbour
    to the fine network's output grid (``fine_mm`` voxels times ``upsample`` sub-voxels, canonical S-I,
    A-P, R-L) over the whole volume, and back by ``resample`` (one-hot probabilities for "probabilities").
    A perfect but certain fine network scores about this (the ROI crop changes the grid's phase a little)."""
    reo = Reorientation.from_direction(direction)
    y = reo.forward(torch.from_numpy(labels.astype(np.uint8)))
    fine = size_for_spacing(tuple(y.shape), reo.spacing(spacing_kji), (fine_mm,) * 3)
    small = resize_labels(y, upsampled_shape(fine, upsample))
    if resample == "nearest":
        back = resize_labels(small, tuple(y.shape))
    else:
        one_hot = torch.nn.functional.one_hot(small.long(), NUM_CLASSES).permute(3, 0, 1, 2).float()
        back = resize_probabilities(one_hot, tuple(y.shape))
    return mean_dsc(labels, reo.inverse(back).numpy())[0]


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
    p.add_argument("--count", type=int, default=5, help="held-out phantoms for DSC (0 skips)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fine-mm", type=float, nargs="+", default=None,
                   help="fine spacings (mm) to compare (default: the weights' own)")
    p.add_argument("--fine-scales", nargs="+", default=None, metavar="S[,S...]",
                   help="sets of inference scales to compare, e.g. 0.95,1.05 1 (default: the weights' own)")
    p.add_argument("--resample", nargs="+", choices=RESAMPLE_MODES, default=list(RESAMPLE_MODES),
                   help="how the fine output goes back to the input grid (default: both, side by side)")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--seed", type=int, nargs="+", default=[2000],
                   help="phantom seeds of the held-out cases, --count of each (default 2000; the shipped weights "
                        "trained on 1000)")
    args = p.parse_args()
    if len(set(args.seed)) != len(args.seed):
        p.error("--seed: each seed once")
    torch.set_num_threads(args.threads)
    model = Predictor.load(args.weights, device="cpu")
    scale_sets = [tuple(float(v) for v in text.split(",")) for text in args.fine_scales or []]
    settings = [replace(model.config, fine_mm=f, fine_scales=sc, resample=r)
                for f in args.fine_mm or [model.config.fine_mm]
                for sc in scale_sets or [model.config.fine_scales] for r in args.resample]
    with tempfile.TemporaryDirectory(prefix="predictor_bench_") as tmp:
        times = time_settings(model, settings, Path(tmp), args.runs)
    scores = score_settings(model, settings, args.seed, args.count)
    report(args, settings, times, scores, model.fine.config.upsample)


def time_settings(model: Predictor, settings: list[PipelineConfig], tmp: Path, runs: int) -> list[dict[str, float]]:
    """Median seconds per step (STEPS) of each setting on one 512x512x100 phantom written under ``tmp``,
    after one warm-up case (allocator, oneDNN kernels)."""
    big = generate_case(seed=2000, index=99, config=PhantomConfig(shape=(512, 512, 100), prefix="Big"))
    image_path, _ = write_case(big, tmp / "big")
    times = []
    for config in settings:
        model.config = config
        time_case(model, image_path, tmp / "warmup.nii.gz")
        measured = [time_case(model, image_path, tmp / "out.nii.gz") for _ in range(runs)]
        times.append({s: statistics.median(r[s] for r in measured) for s in STEPS})
    return times


@dataclass
class Scores:
    """One setting's accuracy: mean DSC per case by seed, DSC per organ over the cases that have it, and
    the grid ceiling per case."""

    by_seed: dict[int, list[float]]
    organs: dict[int, list[float]] = field(default_factory=dict)
    ceilings: list[float] = field(default_factory=list)


def score_settings(model: Predictor, settings: list[PipelineConfig], seeds: list[int], cases: int) -> list[Scores]:
    """Every setting on ``cases`` held-out phantoms of each seed, generated one at a time (48 at 512x512 would
    not fit in memory together). The grid ceiling depends only on the output grid and the resample mode, so
    it is computed once per case for each of those."""
    scores = [Scores({seed: [] for seed in seeds}) for _ in settings]
    upsample = model.fine.config.upsample
    for seed in seeds:
        for i in range(cases):
            case = generate_case(seed=seed, index=i, config=PhantomConfig(domain="mixed"))
            g = case.geometry
            ceiling: dict[tuple[float, str], float] = {}
            for config, score in zip(settings, scores, strict=True):
                key = (config.fine_mm * config.fine_scales[0], config.resample)
                if key not in ceiling:
                    ceiling[key] = grid_ceiling(case.labels, g.spacing_kji, g.direction, key[0], upsample, key[1])
                score.ceilings.append(ceiling[key])
                model.config = config
                labels, _ = model.predict(case.image, g.spacing_kji, g.direction)
                dsc, per = mean_dsc(case.labels, labels)
                score.by_seed[seed].append(dsc)
                for organ, value in per.items():
                    score.organs.setdefault(organ, []).append(value)
    return scores


def report(args: argparse.Namespace, settings: list[PipelineConfig], times: list[dict[str, float]],
           scores: list[Scores], upsample: tuple[int, int, int]) -> None:
    """Per-organ lines, then one row per setting: step times, mean DSC (overall and per seed when there are
    several), the worst case, the grid ceiling, and the total time relative to the first row."""
    for config, score in zip(settings, scores, strict=True):
        if score.organs:
            print(f"fine {config.fine_mm:g} mm x {config.fine_scales}, {config.resample}, per-organ DSC (mean over "
                  "the cases that have it): "
                  + ", ".join(f"{ORGANS[o - 1].short} {np.mean(v):.3f}" for o, v in sorted(score.organs.items())))
    seeds = " ".join(map(str, args.seed))
    print(f"\npredictor CPU benchmark: {args.threads} threads, 512x512x100 phantom, median of {args.runs} runs, "
          f"DSC over {args.count} held-out phantoms per seed (seeds {seeds}, mixed domains); NIfTI codec "
          f"{codec.active().name} (read: the CT, write: the label map)")
    print("grid_ceiling: mean DSC of the true labels resampled to the fine network's output grid "
          f"(fine_mm / {'x'.join(map(str, upsample))}) and back (as the row's resample)")
    several = len(args.seed) > 1
    by_seed = "  ".join(f"seed_{s:<5}" for s in args.seed) if several else ""
    print("fine_mm  scales     resample       " + "  ".join(f"{s:>8}" for s in STEPS)
          + f"   mean_DSC  {by_seed}  min_case_DSC  grid_ceiling  total/first")
    first = times[0]["total"]
    nan = float("nan")
    for config, med, score in zip(settings, times, scores, strict=True):
        every = [v for values in score.by_seed.values() for v in values]
        seed_cols = "  ".join(f"{np.mean(v):10.4f}" for v in score.by_seed.values()) if several else ""
        scales = ",".join(f"{v:g}" for v in config.fine_scales)
        print(f"{config.fine_mm:7.2f}  {scales:9s}  {config.resample:13s}  "
              + "  ".join(f"{med[s]:8.2f}" for s in STEPS)
              + f"   {np.mean(every) if every else nan:8.4f}  {seed_cols}  {min(every) if every else nan:12.4f}"
              + f"  {np.mean(score.ceilings) if score.ceilings else nan:12.4f}  {med['total'] / first:11.2f}")


if __name__ == "__main__":
    main()
