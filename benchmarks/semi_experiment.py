"""Does semi-supervised training help on a shifted domain? Labeled-only vs 1..R pseudo-label rounds,
with filtering (--keep) and without (--keep 1.0), over several seeds, scored by the evaluator.

Data (phantoms, ~3 mm voxels at the default --shape 128 128 64; fine stage at --fine-mm 3): --labeled
portal-phase cases, --unlabeled cases of mixed domains (portal, arterial, noncontrast, lowdose, thick, in
turn), and one held-out test set per --test-domain. For each seed and each keep value it runs
``python -m predictor.train --unlabeled ... --rounds R`` and scores every round's weights (round 0 =
labeled only) on every test set with ``evaluator.score_folder`` (mean DSC and NSD over cases). Rounds 0
and 1 are the same for both keep values of a seed (round 1 has no previous round to measure stability
against, so it keeps all), so the unfiltered arm starts from a copy of them. Seeds run in parallel with
--jobs. Prints a table per domain, the pseudo-labels' own DSC against the phantoms' truth per unlabeled
domain (the "why"), the wall and CPU time; writes OUT/results.csv and OUT/pseudo_quality.csv.

    # the run reported in the README (4530 s wall, 6717 CPU-s on 2 cores):
    python benchmarks/semi_experiment.py --out out/semi_exp --jobs 2 --threads 1 --epochs 14 \
        --test-domain noncontrast arterial lowdose portal
    # the tables again, without training or scoring:
    python benchmarks/semi_experiment.py --out out/semi_exp --test-domain noncontrast arterial lowdose \
        portal --tables-only
    # smoke configuration (proves the script works; numbers meaningless), a few minutes:
    python benchmarks/semi_experiment.py --out out/semi_smoke --labeled 2 --unlabeled 3 --test 2 \
        --shape 64 64 32 --rounds 1 --seeds 0 --epochs 1 --steps-per-epoch 2
"""

from __future__ import annotations

import argparse
import csv
import logging
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from predictor_bench import mean_dsc  # a sibling script: benchmarks/ is on sys.path when run as a script

from challenge.files import atomic_write
from challenge.nifti import read_image, write_label
from evaluator.scoring import score_folder
from phantoms.generate import PhantomConfig, generate_case, write_case
from predictor.pipeline import Predictor

log = logging.getLogger("semi_experiment")
UNLABELED_DOMAINS = ("portal", "arterial", "noncontrast", "lowdose", "thick")


def make_data(root: Path, args: argparse.Namespace) -> dict[str, Path]:
    """root/{labeled,unlabeled,test}/{images,labels}; reused if present (case i depends on (seed, i))."""
    shape = tuple(args.shape)
    sets = {"labeled": (args.labeled, 101, ("portal",)), "unlabeled": (args.unlabeled, 202, UNLABELED_DOMAINS),
            **{f"test_{d}": (args.test, 303, (d,)) for d in args.test_domain}}
    out = {}
    for name, (n, seed, domains) in sets.items():
        folder = root / name
        if not (folder / "images").is_dir() or len(list((folder / "images").iterdir())) < n:
            for i in range(n):
                cfg = PhantomConfig(shape=shape, domain=domains[i % len(domains)], prefix=name.capitalize())
                write_case(generate_case(seed=seed, index=i, config=cfg), folder)
        out[name] = folder
    return out


def train(data: dict[str, Path], out: Path, seed: int, keep: float, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "predictor.train", "--images", str(data["labeled"] / "images"),
           "--labels", str(data["labeled"] / "labels"), "--unlabeled", str(data["unlabeled"] / "images"),
           "--out", str(out), "--rounds", str(args.rounds), "--keep", str(keep), "--teacher", args.teacher,
           "--epochs", str(args.epochs), "--seed", str(seed), "--threads", str(args.threads),
           "--device", args.device, "--fine-mm", str(args.fine_mm)]
    if args.steps_per_epoch:
        cmd += ["--steps-per-epoch", str(args.steps_per_epoch)]
    if args.labeled_share:
        cmd += ["--labeled-share", str(args.labeled_share)]
    if args.warm_start:
        cmd += ["--warm-start"]
    clock = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: training failed ({' '.join(cmd)}): {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - clock


def evaluate(weights: Path, test: Path, work: Path, device: str) -> tuple[float, float]:
    """Mean DSC and NSD over the test cases of ``weights`` (predictions written to work/pred)."""
    model = Predictor.load(weights, device=device)
    pred = work / "pred"
    shutil.rmtree(pred, ignore_errors=True)
    for image_path in sorted((test / "images").iterdir()):
        image, geo = read_image(image_path)
        labels, _ = model.predict(image, geo.spacing_kji, geo.direction)
        write_label(labels, geo, pred / image_path.name.replace("_0000.nii.gz", ".nii.gz"))
    table = score_folder(test / "labels", pred, work / "scores", workers=1, progress=False)
    return float(table["DSC_mean"].mean()), float(table["NSD_mean"].mean())


def run_seed(seed: int, data: dict[str, Path], args: argparse.Namespace) -> list[dict]:
    """Both arms of one seed; rows of (seed, keep, round, DSC, NSD). Rounds 0 and 1 are the same in both
    arms (round 0 sees no pseudo-labels; round 1 has no previous round to score stability against, so it
    keeps every case), so the unfiltered arm starts from a copy of the filtered arm's rounds 0-1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    rows = []
    filtered = args.out / f"seed{seed}_keep{args.keep:g}"
    for keep in dict.fromkeys([args.keep, 1.0]):
        run = args.out / f"seed{seed}_keep{keep:g}"
        if run != filtered:
            for k in range(min(args.rounds, 1) + 1):
                if (filtered / f"round_{k}" / "done.json").is_file() and not (run / f"round_{k}").exists():
                    shutil.copytree(filtered / f"round_{k}", run / f"round_{k}")  # the trainer skips it
        seconds = train(data, run, seed, keep, args)
        log.info("trained %s in %.0f s", run.name, seconds)
        for k in range(args.rounds + 1):
            for domain in args.test_domain:
                dsc, nsd = evaluate(run / f"round_{k}" / "weights", data[f"test_{domain}"],
                                    run / f"eval_{k}_{domain}", args.device)
                rows.append({"domain": domain, "seed": seed, "keep": keep, "round": k, "DSC_mean": round(dsc, 4),
                             "NSD_mean": round(nsd, 4), "train_seconds": round(seconds, 1)})
                log.info("%s: seed %d keep %g round %d: DSC %.4f NSD %.4f", domain, seed, keep, k, dsc, nsd)
    return rows


def pseudo_quality(args: argparse.Namespace, data: dict[str, Path]) -> list[dict]:
    """Per (seed, keep, round >= 1, unlabeled domain): mean DSC of the pseudo-labels against the phantoms'
    true labels (over the organs in the truth) and the share of those scans the round kept. This is what
    the trainer cannot see: how good its pseudo-labels are on each domain and whether the filter drops
    the bad ones."""
    truth = data["unlabeled"] / "labels"
    rows = []
    for run in sorted(args.out.glob("seed*_keep*")):
        seed, keep = run.name.removeprefix("seed").split("_keep")
        for k in range(1, args.rounds + 1):
            selection = run / f"round_{k}" / "selection.csv"
            if not selection.is_file():
                continue
            with open(selection, newline="") as f:
                kept = {r["Name"]: r["kept"] == "1" for r in csv.DictReader(f)}
            per: dict[str, list[tuple[float, bool]]] = {}
            for case, was_kept in kept.items():
                domain = UNLABELED_DOMAINS[(int(case.rsplit("_", 1)[1]) - 1) % len(UNLABELED_DOMAINS)]
                pred = read_image(run / f"round_{k}" / "pseudo" / f"{case}.nii.gz")[0]
                gt = read_image(truth / f"{case}.nii.gz")[0]
                per.setdefault(domain, []).append((mean_dsc(gt, pred)[0], was_kept))
            for domain, values in per.items():
                rows.append({"seed": int(seed), "keep": float(keep), "round": k, "domain": domain,
                             "pseudo_DSC": round(statistics.mean(v for v, _ in values), 4),
                             "kept_share": round(statistics.mean(float(c) for _, c in values), 3)})
    return rows


def print_pseudo_table(rows: list[dict], args: argparse.Namespace) -> None:
    print("\npseudo-label quality per unlabeled domain (DSC against the phantoms' truth; mean over seeds)")
    print(f"{'keep':>5} {'round':>5} " + " ".join(f"{d:>18}" for d in UNLABELED_DOMAINS) + "   (DSC / share kept)")
    for keep in dict.fromkeys([args.keep, 1.0]):
        for k in range(1, args.rounds + 1):
            cells = []
            for d in UNLABELED_DOMAINS:
                sel = [r for r in rows if r["keep"] == keep and r["round"] == k and r["domain"] == d]
                cells.append(f"{statistics.mean(r['pseudo_DSC'] for r in sel):.3f} / "
                             f"{statistics.mean(r['kept_share'] for r in sel):4.2f}" if sel else "-")
            print(f"{keep:>5g} {k:>5d} " + " ".join(f"{c:>18}" for c in cells))


def write_rows(path: Path, rows: list[dict]) -> None:
    """A CSV with the keys of the first row as its header."""
    def write(handle) -> None:
        w = csv.DictWriter(handle, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    atomic_write(path, write)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of all its finished (waited-for) descendants."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Per test domain and keep value: mean DSC/NSD over seeds per round, and the DSC change in points."""
    print(f"\n{args.test} test cases per domain; mean over seeds {args.seeds}; dDSC = points over labeled only")
    print(f"{'domain':>12} {'keep':>5} {'round':>5} {'DSC':>7} {'NSD':>7} {'dDSC':>7}   per seed DSC")
    for domain in args.test_domain:
        for keep in dict.fromkeys([args.keep, 1.0]):
            mine = [r for r in rows if r["domain"] == domain and r["keep"] == keep]
            base = statistics.mean(r["DSC_mean"] for r in mine if r["round"] == 0)
            for k in range(args.rounds + 1):
                sel = sorted((r for r in mine if r["round"] == k), key=lambda r: r["seed"])
                dsc = statistics.mean(r["DSC_mean"] for r in sel)
                per_seed = " ".join(f"{r['DSC_mean']:.4f}" for r in sel)
                print(f"{domain:>12} {keep:>5g} {k:>5d} {dsc:7.4f} {statistics.mean(r['NSD_mean'] for r in sel):7.4f} "
                      f"{100 * (dsc - base):+7.2f}   {per_seed}{'  (labeled only)' if k == 0 else ''}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labeled", type=int, default=8)
    p.add_argument("--unlabeled", type=int, default=150)
    p.add_argument("--test", type=int, default=10)
    p.add_argument("--test-domain", nargs="+", default=["noncontrast", "arterial", "lowdose"],
                   choices=("noncontrast", "lowdose", "arterial", "thick", "portal"),
                   help="one held-out test set per domain (portal: the labeled domain, for reference)")
    p.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64], metavar=("X", "Y", "Z"))
    p.add_argument("--fine-mm", type=float, default=3.0, help="the fine stage's spacing (mm); default 3")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keep", type=float, default=0.9, help="the filtered arm (the other is 1.0)")
    p.add_argument("--teacher", choices=("small", "big"), default="small")
    p.add_argument("--labeled-share", type=float, default=0.0,
                   help="the trainer's --labeled-share (0: every scan equally likely)")
    p.add_argument("--warm-start", action="store_true", help="the trainer's --warm-start")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0: the trainer's default")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (each with --threads threads)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per job")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--tables-only", action="store_true",
                   help="train and score nothing: print the tables from OUT/results.csv and the pseudo-labels")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    clock = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_data(args.out / "data", args)
    log.info("data ready in %.0f s", time.perf_counter() - clock)
    if args.tables_only:
        with open(args.out / "results.csv", newline="") as f:
            rows = [{**r, "seed": int(r["seed"]), "keep": float(r["keep"]), "round": int(r["round"]),
                     "DSC_mean": float(r["DSC_mean"]), "NSD_mean": float(r["NSD_mean"])} for r in csv.DictReader(f)]
    else:
        rows = []
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            for seed_rows in pool.map(run_seed, args.seeds, [data] * len(args.seeds), [args] * len(args.seeds)):
                rows += seed_rows
        write_rows(args.out / "results.csv", rows)
    print_table(rows, args)
    quality = pseudo_quality(args, data)
    if quality:
        write_rows(args.out / "pseudo_quality.csv", quality)
        print_pseudo_table(quality, args)
    if not args.tables_only:
        print(f"whole experiment: {time.perf_counter() - clock:.0f} s wall, {cpu_seconds():.0f} CPU-s "
              f"({args.jobs} job(s) x {args.threads} thread(s), device {args.device})")
        print(f"wrote {args.out / 'results.csv'}")


if __name__ == "__main__":
    main()
