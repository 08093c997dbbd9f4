"""Drawing one fine training patch (``predictor.training.data.sample_patch``): with each organ's voxel indices computed
once per training array (``organ_voxels``, what the trainer does) against scanning the whole label volume
at every draw (``organs=None``), side by side on the same arrays and the same random draws (the patches are
identical, checked here array by array), median of --runs.

The arrays are the trainer's own: phantoms like the shipped weights' training set (192x192x96, mixed
domains, seed 1000) precomputed by ``predictor.training.data.precompute`` (organ box at 2 mm).

    python benchmarks/patch_draw_bench.py                 # 4 phantoms, 5 runs of 200 draws
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import torch

from phantoms.generate import PhantomConfig, generate_case, write_case
from predictor.training.config import TrainConfig
from predictor.training.data import organ_voxels, precompute, sample_patch

Pair = tuple[np.ndarray, np.ndarray]


def draw(data: list[Pair], organs: list[dict[int, np.ndarray]] | None, draws: int, seed: int) -> Iterator[Pair]:
    """``draws`` patches as the trainer draws them (a random pair, then a patch of it), from the rng ``seed``;
    ``organs`` None: each draw scans the label volume."""
    spec, rng = TrainConfig().fine, np.random.default_rng(seed)
    for _ in range(draws):
        i = int(rng.integers(len(data)))
        yield sample_patch(*data[i], spec.patch, spec.foreground_fraction, rng, upsample=spec.unet.upsample,
                           organs=None if organs is None else organs[i])


def seconds_per_draw(data: list[Pair], organs: list[dict[int, np.ndarray]] | None, draws: int, seed: int) -> float:
    clock = time.perf_counter()
    for _ in draw(data, organs, draws, seed):
        pass
    return (time.perf_counter() - clock) / draws


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--draws", type=int, default=200, help="patches per run")
    args = p.parse_args()
    torch.set_num_threads(1)  # the trainer draws batches in one background thread
    cfg, data = TrainConfig(), []
    with tempfile.TemporaryDirectory(prefix="patch_bench_") as tmp:
        for i in range(args.cases):
            case = generate_case(seed=1000, index=i, config=PhantomConfig(shape=(192, 192, 96), domain="mixed"))
            image, label = write_case(case, tmp)
            data += precompute(case.case, image, label, cfg).fine
    clock = time.perf_counter()
    organs = [organ_voxels(y) for _, y in data]
    index_s = (time.perf_counter() - clock) / len(data)
    for (xa, ya), (xb, yb) in zip(draw(data, None, args.draws, 0), draw(data, organs, args.draws, 0), strict=True):
        if not (np.array_equal(xa, xb) and np.array_equal(ya, yb)):
            raise SystemExit("the two ways drew different patches")
    scan, indexed = [], []
    for run in range(args.runs):
        scan.append(seconds_per_draw(data, None, args.draws, run))
        indexed.append(seconds_per_draw(data, organs, args.draws, run))
    print(f"\nfine patch draw, {args.cases} phantoms at 2 mm (label arrays {[y.shape for _, y in data]}), "
          f"median of {args.runs} runs of {args.draws} draws, 1 thread; the same {args.draws} patches both ways")
    print(f"organ index, once per array: {index_s * 1e3:.1f} ms")
    print(f"{'way':24s} {'ms/patch':>9s}  ratio")
    for name, values in (("scan labels each draw", scan), ("organ index (trainer)", indexed)):
        ratio = statistics.median(scan) / statistics.median(values)
        print(f"{name:24s} {statistics.median(values) * 1e3:9.3f}  {ratio:5.1f}x")


if __name__ == "__main__":
    main()
