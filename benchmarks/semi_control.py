"""Control for the semi-supervised experiment: the labeled scans alone, trained for the same number of
steps as a warm-started pseudo-label round sees in all (round 0 + round 1 = 2 x --epochs), so that a
gain of round 1 over round 0 can be told apart from the gain of simply training longer.

Uses the data of ``benchmarks/semi_experiment.py --out OUT`` (OUT/data) and its scorer; writes
OUT/control_e<EPOCHS>/seed<S>/ and OUT/control.csv, and prints DSC/NSD per test domain and seed.

    python benchmarks/semi_control.py --out out/semi_exp --epochs 28 --jobs 2 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from semi_experiment import cpu_seconds, evaluate, write_rows


def run_seed(seed: int, args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    data, out = args.out / "data", args.out / f"control_e{args.epochs}" / f"seed{seed}"
    if not (out / "weights" / "fine.pt").is_file():
        cmd = [sys.executable, "-m", "predictor.train", "--images", str(data / "labeled" / "images"),
               "--labels", str(data / "labeled" / "labels"), "--out", str(out), "--epochs", str(args.epochs),
               "--seed", str(seed), "--threads", str(args.threads), "--device", "cpu", "--fine-mm", str(args.fine_mm)]
        subprocess.run(cmd, check=True, capture_output=True)
    rows = []
    for domain in args.test_domain:
        dsc, nsd = evaluate(out / "weights", data / f"test_{domain}", out / f"eval_{domain}", "cpu")
        rows.append({"domain": domain, "seed": seed, "epochs": args.epochs, "DSC_mean": round(dsc, 4),
                     "NSD_mean": round(nsd, 4)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the semi_experiment.py --out folder")
    p.add_argument("--epochs", type=int, default=28)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--test-domain", nargs="+", default=["noncontrast", "arterial", "lowdose", "portal"])
    p.add_argument("--fine-mm", type=float, default=3.0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not (args.out / "data" / "labeled").is_dir():
        raise SystemExit(f"error: {args.out / 'data' / 'labeled'}: no data (run semi_experiment.py first)")
    clock = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        for seed_rows in pool.map(run_seed, args.seeds, [args] * len(args.seeds)):
            rows += seed_rows
    write_rows(args.out / "control.csv", rows)
    print(f"\nlabeled only, {args.epochs} epochs; mean over seeds {args.seeds}")
    for domain in args.test_domain:
        sel = sorted((r for r in rows if r["domain"] == domain), key=lambda r: r["seed"])
        print(f"{domain:>12} DSC {statistics.mean(r['DSC_mean'] for r in sel):.4f} "
              f"NSD {statistics.mean(r['NSD_mean'] for r in sel):.4f}   per seed "
              + " ".join(f"{r['DSC_mean']:.4f}" for r in sel))
    print(f"{time.perf_counter() - clock:.0f} s wall, {cpu_seconds():.0f} CPU-s")


if __name__ == "__main__":
    main()
