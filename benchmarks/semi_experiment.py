"""Do pseudo-labels on unlabeled scans of other domains beat spending the same steps on the labeled scans?

Data (phantoms of --shape voxels, ~3 mm at the default 128 x 128 x 64; fine stage at --fine-mm): --labeled
portal-phase scans; --unlabeled scans of the shifted domains (noncontrast, arterial, lowdose, thick, mixed,
in turn); --test held-out scans per --test-domain. Per seed, every arm through ``python -m predictor.train``
(steps: N = --epochs x 50 fine steps; the coarse network gets a third of the epochs):

- ``teacher``: labeled only, N steps (``--rounds 0``);
- ``control``: the teacher trained on for N more labeled-only steps (``--labeled-share 1``): 2N;
- ``student_filtered``: warm-started from the teacher, N steps on labeled + the --keep best of the teacher's
  pseudo-labels by --filter, --labeled-share of the patches from the labeled scans: 2N;
- ``student_keep1`` (with --unfiltered-arm): the same with every non-empty pseudo-label: 2N;
- ``wide_teacher``: a --teacher-width times wider network, labeled only, N steps;
- ``distilled``: FLARE22's winners' recipe: the wide teacher's pseudo-labels (--keep best by --filter), a
  small student from scratch for N steps on labeled + pseudo-labeled scans: 2N (wider steps cost more CPU).

Round 0 is shared: each arm starts from a copy of the teacher's (the trainer skips a finished round).
Every arm's weights are scored on every test set with the evaluator (per case DSC and NSD). Then, per
seed, the filters are measured: each pseudo-label's DSC against the phantoms' truth beside its three
measures (stability: the labels changed when student_filtered, what a round 2 would use, labels the scan again;
disagreement between the two inference scales; uncertainty), per domain and per organ.

Prints, per test domain, each arm's DSC and NSD (mean over cases and seeds) and its difference to the
control with a 95 % paired-bootstrap interval (10 000 resamples of the test cases; a case's difference is
its mean over the seeds), the pseudo-labels' quality per domain and organ, the filters' quality, and the
CPU time of every arm. Writes OUT/cases.csv, OUT/pseudo.csv and OUT/cost.csv; --tables-only reprints.

    # the run of docs/experiments/semi-supervised.md (2 CPU cores, 73 min; every default as it used):
    python benchmarks/semi_experiment.py --out out/semi22 --jobs 2 --threads 1
    python benchmarks/semi_experiment.py --out out/semi22 --tables-only
    python benchmarks/semi_experiment.py --out docs/experiments/semi22 --tables-only  # that run's own CSVs
    # smoke configuration (proves the script works; numbers meaningless):
    python benchmarks/semi_experiment.py --out out/semi_smoke --labeled 2 --unlabeled 5 --test 2 \
        --shape 64 64 32 --seeds 0 --epochs 1 --steps-per-epoch 2 --test-domain noncontrast portal
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from predictor_bench import mean_dsc  # a sibling script: benchmarks/ is on sys.path when run as a script
from scipy import stats

from challenge.files import atomic_write
from challenge.labels import ORGANS
from challenge.nifti import read_image, write_label
from evaluator.scoring import score_folder
from phantoms.generate import PhantomConfig, generate_case, write_case
from predictor.pipeline import Predictor
from predictor.training.semi import FILTERS, pseudo_label, select

log = logging.getLogger("semi_experiment")
UNLABELED_DOMAINS = ("noncontrast", "arterial", "lowdose", "thick", "mixed")
TEST_DOMAINS = ("noncontrast", "arterial", "lowdose", "thick", "portal")
ARMS = ("teacher", "control", "student_keep1", "student_filtered", "wide_teacher", "distilled")
STEPS = {"teacher": "N", "control": "2N", "student_keep1": "2N", "student_filtered": "2N",
         "wide_teacher": "N (wide)", "distilled": "N (wide) + N"}


def make_data(root: Path, args: argparse.Namespace) -> dict[str, Path]:
    """root/{labeled,unlabeled,test_<domain>}/{images,labels}; reused if present (case i depends on
    (set seed, i) only)."""
    sets = {"labeled": (args.labeled, 101, ("portal",)), "unlabeled": (args.unlabeled, 202, UNLABELED_DOMAINS),
            **{f"test_{d}": (args.test, 303, (d,)) for d in args.test_domain}}
    out = {}
    for name, (n, seed, domains) in sets.items():
        folder = root / name
        if not (folder / "images").is_dir() or len(list((folder / "images").iterdir())) < n:
            for i in range(n):
                cfg = PhantomConfig(shape=tuple(args.shape), domain=domains[i % len(domains)],
                                    prefix=name.capitalize())
                write_case(generate_case(seed=seed, index=i, config=cfg), folder)
        out[name] = folder
    return out


def unlabeled_domain(case: str) -> str:
    """The domain an unlabeled case was generated in (they go in turn)."""
    return UNLABELED_DOMAINS[(int(case.rsplit("_", 1)[1]) - 1) % len(UNLABELED_DOMAINS)]


def child_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


def own_cpu() -> float:
    """CPU seconds (user + system) of this process."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


@dataclass(frozen=True, kw_only=True)
class Arm:
    """One training command of a seed: its folder, its trainer flags, what it copies before it starts, and
    which exported weights are scored as which arm."""

    name: str
    flags: tuple[str, ...]
    copy: tuple[str, ...] = ()  # folders of the teacher's run copied in (round_0, round_1/pseudo, ...)
    copy_from: str = "teacher"
    scored: tuple[tuple[str, str], ...] = ()  # (arm, weights folder relative to the run)


def arms(args: argparse.Namespace) -> list[Arm]:
    """The training commands of one seed, in order (a later one may copy an earlier one's folders)."""
    share = ("--labeled-share", str(args.labeled_share))
    student = ("--rounds", "1", "--warm-start", *share, "--filter", args.filter)
    unfiltered = [Arm(name="student_keep1", flags=(*student, "--keep", "1"), copy=("round_0",),
                      scored=(("student_keep1", "round_1/weights"),))] if args.unfiltered_arm else []
    reuse = ("round_1/pseudo", "round_1/measures") if args.unfiltered_arm else ()
    return [
        Arm(name="teacher", flags=("--rounds", "0"), scored=(("teacher", "round_0/weights"),)),
        Arm(name="control", flags=("--rounds", "1", "--warm-start", "--labeled-share", "1"), copy=("round_0",),
            scored=(("control", "round_1/weights"),)),
        *unfiltered,
        Arm(name="student_filtered", flags=(*student, "--keep", str(args.keep)), copy=("round_0", *reuse),
            copy_from="student_keep1" if args.unfiltered_arm else "teacher",
            scored=(("student_filtered", "round_1/weights"),)),
        Arm(name="distilled", flags=("--rounds", "1", "--no-warm-start", "--teacher", "big", "--teacher-width",
                                     str(args.teacher_width), *share, "--filter", args.filter, "--keep",
                                     str(args.keep)),
            scored=(("wide_teacher", "round_0/teacher"), ("distilled", "round_1/weights"))),
    ]


def train(arm: Arm, run: Path, data: dict[str, Path], seed: int, args: argparse.Namespace) -> dict:
    """Run one arm's training command (copying its shared folders first); its wall and CPU seconds."""
    for rel in arm.copy:
        source, target = run.parent / arm.copy_from / rel, run / rel
        if source.exists() and not target.exists():
            shutil.copytree(source, target)
    cmd = [sys.executable, "-m", "predictor.train", "--images", str(data["labeled"] / "images"),
           "--labels", str(data["labeled"] / "labels"), "--unlabeled", str(data["unlabeled"] / "images"),
           "--out", str(run), "--epochs", str(args.epochs), "--seed", str(seed), "--threads", str(args.threads),
           "--device", args.device, "--fine-mm", str(args.fine_mm), "--quiet", *arm.flags]
    if args.steps_per_epoch:
        cmd += ["--steps-per-epoch", str(args.steps_per_epoch)]
    wall, cpu = time.perf_counter(), child_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: training failed ({' '.join(cmd)}): {proc.stderr.strip().splitlines()[-3:]}")
    return {"seed": seed, "run": arm.name, "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(child_cpu() - cpu, 1)}


def evaluate(weights: Path, test: Path, work: Path, device: str) -> list[tuple[str, float, float]]:
    """(case, DSC, NSD) of ``weights`` on every test case (predictions written to work/pred)."""
    model = Predictor.load(weights, device=device)
    pred = work / "pred"
    shutil.rmtree(pred, ignore_errors=True)
    for image_path in sorted((test / "images").iterdir()):
        image, geo = read_image(image_path)
        labels, _ = model.predict(image, geo.spacing_kji, geo.direction)
        write_label(labels, geo, pred / image_path.name.replace("_0000.nii.gz", ".nii.gz"))
    table = score_folder(test / "labels", pred, work / "scores", workers=1, progress=False)
    return [(str(r.Name), float(r.DSC_mean), float(r.NSD_mean)) for r in table.itertuples()]


def measure_pseudo(seed_dir: Path, data: dict[str, Path], seed: int, source: str, args: argparse.Namespace
                   ) -> list[dict]:
    """Per unlabeled case: the pseudo-label's DSC against the truth (mean and per organ) beside the measures
    the filters rank by, for ``source`` "teacher" (student_filtered's round 1) or "wide_teacher" (distilled's).
    Stability needs a second labelling: for the teacher's, the round-1 student of student_filtered labels
    every scan again (as a round 2 would), into seed_dir/stability_probe."""
    rdir = seed_dir / ("student_filtered" if source == "teacher" else "distilled") / "round_1"
    probe = {}
    if source == "teacher":
        probe, _ = pseudo_label(rdir / "weights", _images(data["unlabeled"]), rdir / "pseudo",
                                seed_dir / "stability_probe", device=args.device, progress=False)
    rows = []
    for path in sorted((rdir / "pseudo").glob("*.nii.gz")):
        case = path.name.removesuffix(".nii.gz")
        truth = read_image(data["unlabeled"] / "labels" / path.name)[0]
        mean, per = mean_dsc(truth, read_image(path)[0])
        side = json.loads((rdir / "measures" / f"{case}.json").read_text())
        rows.append({"seed": seed, "source": source, "case": case, "domain": unlabeled_domain(case),
                     "DSC": round(mean, 4), "stability": probe[case].stability if probe else None,
                     "disagreement": side["disagreement"], "uncertainty": side["uncertainty"],
                     **{f"organ_{o}": round(per[o], 4) if o in per else None for o in range(1, 14)}})
    return rows


def _images(folder: Path) -> dict[str, Path]:
    return {p.name.removesuffix("_0000.nii.gz"): p for p in sorted((folder / "images").glob("*_0000.nii.gz"))}


def _timed(seed: int, name: str, work: Callable[[], list[dict]], cost: list[dict]) -> list[dict]:
    """``work()``, its wall and CPU seconds (this process) appended to ``cost`` as ``name``."""
    wall, cpu = time.perf_counter(), own_cpu()
    rows = work()
    cost.append({"seed": seed, "run": name, "wall_s": round(time.perf_counter() - wall, 1),
                 "cpu_s": round(own_cpu() - cpu, 1)})
    return rows


def score_arm(weights: Path, name: str, seed: int, data: dict[str, Path], args: argparse.Namespace) -> list[dict]:
    """Per-case DSC and NSD rows of one arm's ``weights`` on its test domains."""
    rows: list[dict] = []
    domains = args.wide_teacher_domains if name == "wide_teacher" else args.test_domain
    for domain in domains:
        for case, dsc, nsd in evaluate(weights, data[f"test_{domain}"], args.out / f"seed{seed}" / "eval" / name
                                       / domain, args.device):
            rows.append({"seed": seed, "arm": name, "domain": domain, "case": case, "DSC": round(dsc, 4),
                         "NSD": round(nsd, 4)})
        log.info("seed %d %s on %s: DSC %.4f", seed, name, domain,
                 statistics.mean(r["DSC"] for r in rows if r["domain"] == domain))
    return rows


def run_seed(seed: int, data: dict[str, Path], args: argparse.Namespace) -> tuple[list[dict], list[dict], list[dict]]:
    """Every arm of one seed: (per-case score rows, pseudo-label rows, cost rows). The rows so far are
    written to OUT/seed<S>/{cases,pseudo,cost}.csv after every step (--tables-only reads them when the
    whole run's files are not there)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    seed_dir = args.out / f"seed{seed}"
    tables: dict[str, list[dict]] = {"cases": [], "pseudo": [], "cost": []}
    cost = tables["cost"]
    for arm in arms(args):
        cost.append(train(arm, seed_dir / arm.name, data, seed, args))
        log.info("seed %d: trained %s in %.0f s wall, %.0f CPU-s", seed, arm.name, cost[-1]["wall_s"],
                 cost[-1]["cpu_s"])
        for name, rel in arm.scored:
            tables["cases"] += _timed(seed, f"score {name}",
                                      lambda n=name, w=seed_dir / arm.name / rel: score_arm(w, n, seed, data, args),
                                      cost)
        source = {"student_filtered": "teacher", "distilled": "wide_teacher"}.get(arm.name)
        if source:
            tables["pseudo"] += _timed(seed, f"measure {source} pseudo-labels",
                                       lambda s=source: measure_pseudo(seed_dir, data, seed, s, args), cost)
        for key, rows in tables.items():
            if rows:
                write_rows(seed_dir / f"{key}.csv", rows)
    return tables["cases"], tables["pseudo"], tables["cost"]


def bootstrap(diffs: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``diffs`` over ``n`` resamples with replacement."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n, len(diffs)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def per_case(rows: list[dict], arm: str, domain: str, metric: str) -> dict[str, float]:
    """Case -> the arm's ``metric`` on that test case, averaged over the seeds."""
    values: dict[str, list[float]] = {}
    for r in rows:
        if r["arm"] == arm and r["domain"] == domain:
            values.setdefault(r["case"], []).append(float(r[metric]))
    return {c: statistics.mean(v) for c, v in values.items()}


def print_scores(rows: list[dict], args: argparse.Namespace) -> None:
    """Per test domain and arm: DSC, NSD, and the difference to the control in points with its interval."""
    seeds = sorted({int(r["seed"]) for r in rows})
    print(f"\nper test domain ({args.test} cases, seeds {seeds}): mean over cases and seeds; d = points over the "
          "control (labeled only, 2N steps), 95 % paired bootstrap over test cases")
    print(f"{'domain':>12} {'arm':>17} {'steps':>13} {'DSC':>7} {'NSD':>7} {'dDSC':>7} {'95% CI':>16} "
          f"{'dNSD':>7} {'95% CI':>16}   DSC per seed")
    for domain in args.test_domain:
        base = {m: per_case(rows, "control", domain, m) for m in ("DSC", "NSD")}
        for arm in ARMS:
            mine = {m: per_case(rows, arm, domain, m) for m in ("DSC", "NSD")}
            if not mine["DSC"] or not base["DSC"]:
                continue
            cells = []
            for m in ("DSC", "NSD"):
                diffs = np.array([mine[m][c] - base[m][c] for c in sorted(base[m]) if c in mine[m]]) * 100
                lo, hi = bootstrap(diffs)
                cells.append(f"{diffs.mean():+7.2f} [{lo:+6.2f},{hi:+6.2f}]" if arm != "control" else
                             f"{'':>7} {'':>16}")
            per_seed = " ".join(f"{statistics.mean(float(r['DSC']) for r in rows if r['arm'] == arm and r['domain'] == domain and int(r['seed']) == s):.4f}"  # noqa: E501
                                for s in seeds)
            print(f"{domain:>12} {arm:>17} {STEPS[arm]:>13} {statistics.mean(mine['DSC'].values()):7.4f} "
                  f"{statistics.mean(mine['NSD'].values()):7.4f} {cells[0]} {cells[1]}   {per_seed}")


def print_pseudo(rows: list[dict], args: argparse.Namespace) -> None:
    """Pseudo-label DSC against the truth per unlabeled domain (mean, per organ), and each filter's worth."""
    def mean(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f}" if values else "-"

    for source in ("teacher", "wide_teacher"):
        mine = [r for r in rows if r["source"] == source]
        if not mine:
            continue
        print(f"\npseudo-labels of the {source} against the phantoms' truth: mean DSC per unlabeled domain and "
              "organ (over cases with the organ, both seeds)")
        names = [o.short for o in ORGANS]
        print(f"{'domain':>12} {'n':>3} {'DSC':>6} " + " ".join(f"{n[:6]:>6}" for n in names))
        for domain in (*UNLABELED_DOMAINS, "all"):
            sel = [r for r in mine if domain in ("all", r["domain"])]
            organs = [mean([float(r[f"organ_{o}"]) for r in sel if r[f"organ_{o}"] not in (None, "")])
                      for o in range(1, 14)]
            print(f"{domain:>12} {len(sel):>3} {mean([float(r['DSC']) for r in sel]):>6} "
                  + " ".join(f"{c:>6}" for c in organs))
    print_filters([r for r in rows if r["source"] == "teacher"], args.keep)


def print_filters(rows: list[dict], keep: float) -> None:
    """Per filter: Spearman correlation of the measure with the pseudo-label's true DSC (per seed, then
    averaged), and the mean true DSC of what keeping the best ``keep`` share selects, with the share of each
    domain kept."""
    print(f"\nfilters on the teacher's pseudo-labels (keep {keep:g} per seed): rank correlation with the true "
          "DSC (negative = the measure finds bad ones), true DSC of kept / dropped, share kept per domain")
    print(f"{'filter':>13} {'rho':>6} {'kept':>6} {'drop':>6} {'all':>6}   "
          + " ".join(f"{d:>11}" for d in UNLABELED_DOMAINS))
    for name in FILTERS:
        rhos: list[float] = []
        kept: list[float] = []
        dropped: list[float] = []
        share: dict[str, list[float]] = {d: [] for d in UNLABELED_DOMAINS}
        for seed in sorted({r["seed"] for r in rows}):
            sel = [r for r in rows if r["seed"] == seed and r[name] not in (None, "")]
            if len(sel) < 3:
                continue
            rhos.append(spearman([float(r[name]) for r in sel], [float(r["DSC"]) for r in sel]))
            chosen = select({r["case"]: float(r[name]) for r in sel}, set(), keep, name)
            for r in sel:
                (kept if chosen[r["case"]][0] else dropped).append(float(r["DSC"]))
                share[r["domain"]].append(float(chosen[r["case"]][0]))
        if not rhos:
            print(f"{name:>13} (not measured)")
            continue
        every = kept + dropped
        print(f"{name:>13} {statistics.mean(rhos):+6.2f} {statistics.mean(kept):6.3f} "
              f"{statistics.mean(dropped) if dropped else float('nan'):6.3f} {statistics.mean(every):6.3f}   "
              + " ".join(f"{statistics.mean(v) if v else float('nan'):>11.2f}" for v in share.values()))


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); 0.0 where either side is constant."""
    if len(set(x)) < 2 or len(set(y)) < 2:
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def print_cost(rows: list[dict], wall: float | None) -> None:
    """CPU and wall seconds of every training command and scoring pass, per seed and summed."""
    print("\ncost: CPU-s (user + system) and wall s of each command, mean over seeds (training includes "
          "the trainer's own pseudo-labelling)")
    names = list(dict.fromkeys(r["run"] for r in rows))
    for name in names:
        sel = [r for r in rows if r["run"] == name]
        print(f"{name:>28} {statistics.mean(float(r['cpu_s']) for r in sel):8.0f} CPU-s "
              f"{statistics.mean(float(r['wall_s']) for r in sel):8.0f} s wall")
    print(f"{'all seeds, all commands':>28} {sum(float(r['cpu_s']) for r in rows):8.0f} CPU-s"
          + (f"; whole experiment {wall:.0f} s wall" if wall is not None else ""))


def write_rows(path: Path, rows: list[dict]) -> None:
    """A CSV with the keys of the first row as its header."""
    def write(handle) -> None:
        w = csv.DictWriter(handle, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    atomic_write(path, write)


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV written by :func:`write_rows` (values as strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_tables(out: Path, name: str) -> list[dict]:
    """OUT/<name>.csv of a finished run, else the seeds' partial OUT/seed*/<name>.csv together."""
    if (out / f"{name}.csv").is_file():
        return read_rows(out / f"{name}.csv")
    return [r for path in sorted(out.glob(f"seed*/{name}.csv")) for r in read_rows(path)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labeled", type=int, default=8)
    p.add_argument("--unlabeled", type=int, default=30)
    p.add_argument("--test", type=int, default=10, help="held-out scans per test domain")
    p.add_argument("--test-domain", nargs="+", default=["noncontrast", "arterial", "lowdose", "portal"],
                   choices=TEST_DOMAINS)
    p.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64], metavar=("X", "Y", "Z"))
    p.add_argument("--fine-mm", type=float, default=3.0, help="the fine stage's spacing (mm); default 3")
    p.add_argument("--epochs", type=int, default=16, help="N / 50: the teacher's fine epochs (default 16)")
    p.add_argument("--filter", choices=FILTERS, default="disagreement", help="the filtered arms' measure")
    p.add_argument("--keep", type=float, default=0.7, help="the filtered arms' kept share (default 0.7)")
    p.add_argument("--labeled-share", type=float, default=0.5, help="the students' --labeled-share")
    p.add_argument("--teacher-width", type=float, default=1.5, help="the wide teacher's --teacher-width")
    p.add_argument("--wide-teacher-domains", nargs="+", default=None, choices=TEST_DOMAINS,
                   help="test domains the wide teacher itself is scored on (default: every --test-domain)")
    p.add_argument("--unfiltered-arm", action="store_true", help="also train student_keep1 (every pseudo-label)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0: the trainer's default (50 fine)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (each with --threads threads)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per job")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--tables-only", action="store_true",
                   help="train and score nothing: reprint the tables from OUT/cases.csv, pseudo.csv, cost.csv")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.wide_teacher_domains = args.wide_teacher_domains or args.test_domain
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    clock = time.perf_counter()
    wall: float | None = None
    if args.tables_only:
        cases, pseudo, cost = (read_tables(args.out, n) for n in ("cases", "pseudo", "cost"))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        data = make_data(args.out / "data", args)
        log.info("data ready in %.0f s", time.perf_counter() - clock)
        cases, pseudo, cost = [], [], []
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            for c, q, t in pool.map(run_seed, args.seeds, [data] * len(args.seeds), [args] * len(args.seeds)):
                cases, pseudo, cost = cases + c, pseudo + q, cost + t
        wall = time.perf_counter() - clock
        cost.append({"seed": -1, "run": "whole experiment", "wall_s": round(wall, 1),
                     "cpu_s": round(own_cpu() + child_cpu(), 1)})
        for name, rows in (("cases", cases), ("pseudo", pseudo), ("cost", cost)):
            write_rows(args.out / f"{name}.csv", rows)
    show: list[Callable[[], None]] = [lambda: print_scores(cases, args), lambda: print_pseudo(pseudo, args),
                                      lambda: print_cost([r for r in cost if int(r["seed"]) >= 0], _wall(cost))]
    for table in show:
        table()


def _wall(cost: list[dict]) -> float | None:
    whole = [float(r["wall_s"]) for r in cost if r["run"] == "whole experiment"]
    return whole[0] if whole else None


if __name__ == "__main__":
    main()
