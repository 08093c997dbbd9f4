"""Drawing one fine training patch (``predictor.train.sample_patch``): with each organ's voxel indices computed
once per training array (``organ_voxels``, what the trainer does) against scanning the whole label volume
at every draw (``organs=None``), side by side on the same arrays and the same random draws (the patches are
identical, checked here), median of --runs.

The arrays are the trainer's own: phantoms like the shipped weights' training set (192x192x96, mixed
domains, seed 1000) precomputed by ``predictor.train.precompute`` (organ box at 2 mm).

    python benchmarks/patch_draw_bench.py                 # 4 phantoms, 5 runs of 200 draws
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from phantoms.generate import PhantomConfig, generate_case, write_case
from predictor.train import TrainConfig, organ_voxels, precompute, sample_patch


def time_draws(data: list, organs: list | None, draws: int, seed: int) -> tuple[float, list]:
    """Seconds per draw of ``draws`` patches, and each patch's label sum (to check both ways drew the same)."""
    spec, rng, seen = TrainConfig().fine, np.random.default_rng(seed), []
    clock = time.perf_counter()
    for _ in range(draws):
        i = int(rng.integers(len(data)))
        x, y = sample_patch(*data[i], spec.patch, spec.foreground_fraction, rng, spec.unet.upsample,
                            None if organs is None else organs[i])
        seen.append(int(y.sum()))
    return (time.perf_counter() - clock) / draws, seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--draws", type=int, default=200, help="patches per run")
    args = p.parse_args()
    torch.set_num_threads(1)  # the trainer draws batches in one background thread
    cfg, tmp = TrainConfig(), Path(tempfile.mkdtemp(prefix="patch_bench_"))
    data = []
    for i in range(args.cases):
        case = generate_case(seed=1000, index=i, config=PhantomConfig(shape=(192, 192, 96), domain="mixed"))
        image, label = write_case(case, tmp)
        data += precompute(case.case, image, label, cfg).fine
    clock = time.perf_counter()
    organs = [organ_voxels(y) for _, y in data]
    index_s = (time.perf_counter() - clock) / len(data)
    scan, indexed = [], []
    for run in range(args.runs):
        s_scan, a = time_draws(data, None, args.draws, run)
        s_index, b = time_draws(data, organs, args.draws, run)
        if a != b:
            raise SystemExit("the two ways drew different patches")
        scan.append(s_scan)
        indexed.append(s_index)
    print(f"\nfine patch draw, {args.cases} phantoms at 2 mm (label arrays {[y.shape for _, y in data]}), "
          f"median of {args.runs} runs of {args.draws} draws, 1 thread")
    print(f"organ index, once per array: {index_s * 1e3:.1f} ms")
    print(f"{'way':24s} {'ms/patch':>9s}  ratio")
    for name, values in (("scan labels each draw", scan), ("organ index (trainer)", indexed)):
        ratio = statistics.median(scan) / statistics.median(values)
        print(f"{name:24s} {statistics.median(values) * 1e3:9.3f}  {ratio:5.1f}x")


if __name__ == "__main__":
    main()
