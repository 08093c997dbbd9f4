"""Semi-supervised training: pseudo-labels from unlabeled scans, filtered by stability, iterated, and
optionally distilled from a big teacher. Entry point: ``python -m predictor.train ... --unlabeled DIR``.

Rounds (``--rounds K`` gives rounds 0..K):

- round 0 trains on the labeled scans only;
- round k >= 1: (1) round k-1's model (both stages, through :class:`predictor.pipeline.Predictor` on its
  exported weights; with ``--teacher big`` round k-1's big teacher) predicts a pseudo-label for every
  unlabeled scan; (2) each case gets a stability score: the fraction of foreground voxels (union of this
  and the previous round's pseudo-label) whose label changed since round k-1's pseudo-label; 0 = stable.
  Round 1 has no previous pseudo-label: it keeps every non-empty case (score left blank); (3) the
  ``round(keep * n)`` most stable cases are kept (at least 1), pseudo-labels with no organ are always
  dropped; (4) the model is retrained from scratch on the labeled plus the kept pseudo-labeled scans
  (``--labeled-share F``: a patch comes from a labeled scan with probability F, else from a pseudo-labeled
  one; default: every scan equally likely; ``--warm-start``: from round k-1's weights, not from random).
- ``--teacher big``: every round also trains a teacher (twice the width) on the same data; the teacher
  makes the next round's pseudo-labels and the small model is what is exported.

RUN_DIR layout::

    run.json                      arguments, versions, seeds, per-round times, "status": running|complete
    curves.csv, curves.png        loss per epoch, all rounds and networks
    weights/                      deployable = the last round's small model (Predictor.load reads it)
    round_<k>/weights/            that round's small model;  round_<k>/teacher/ (--teacher big)
    round_<k>/pseudo/<Case>.nii.gz   pseudo-labels made at the start of round k (k >= 1)
    round_<k>/selection.csv       Name, score, kept, reason
    round_<k>/train_log.csv       that round's loss rows
    round_<k>/done.json           written last: a round with it is skipped on a rerun
    round_<k>/ckpt/               per-epoch checkpoints (deleted when the round is done)

Resuming: rerun the same command with the same ``--out``; finished rounds are skipped, an unfinished one
continues from its last epoch checkpoint, and pseudo-labels already written are reused.

Bad data (label on another grid, labels outside 0..13, image without label, unreadable file, also in
--unlabeled) stops the run before training with exit 2 and one line naming the file; nothing is written.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from challenge.cases import list_images
from challenge.files import atomic_write
from challenge.nifti import NiftiError, read_image, write_label

from .pipeline import Predictor
from .train import (
    Case,
    DataError,
    NetTraining,
    TrainConfig,
    export,
    fine_data,
    precompute,
    train_config,
    train_net,
    validate,
)

log = logging.getLogger("predictor.semi")

CURVE_FIELDS = ["round", "model", "net", "step", "loss", "seconds"]


@dataclass(frozen=True)
class SemiConfig:
    rounds: int
    keep: float
    teacher: str  # "small" | "big"
    epochs: int
    seed: int
    steps_per_epoch: int  # 0: the TrainConfig's
    labeled_share: float = 0.0  # share of patches from the labeled scans in rounds >= 1; 0: uniform over scans
    warm_start: bool = False  # round k >= 1 starts from round k-1's model (same width) instead of random


def case_weights(n_labeled: int, n_total: int, labeled_share: float) -> np.ndarray | None:
    """Per-case draw probabilities: the first ``n_labeled`` cases share ``labeled_share``, the rest the
    remainder. None (uniform over cases) when the share is 0 or there are no pseudo-labeled cases."""
    n_pseudo = n_total - n_labeled
    if labeled_share <= 0 or n_pseudo <= 0 or n_labeled <= 0:
        return None
    return np.array([labeled_share / n_labeled] * n_labeled + [(1 - labeled_share) / n_pseudo] * n_pseudo)


def validate_unlabeled(folder: Path) -> dict[str, Path]:
    """Case -> image for every unlabeled scan, each read in full once; DataError naming a bad file."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    images = list_images(folder)
    if not images:
        raise DataError(f"{folder}: no <Case>_0000.nii.gz images")
    for path in images.values():
        try:
            image, _ = read_image(path)
        except NiftiError as err:
            raise DataError(str(err)) from None
        except (RuntimeError, OSError, EOFError) as err:
            raise DataError(f"{path}: unreadable ({type(err).__name__})") from None
        if image.ndim != 3:
            raise DataError(f"{path}: not a 3D image (shape {image.shape})")
    return images


def stability(previous: np.ndarray | None, current: np.ndarray) -> float | None:
    """Fraction of the foreground (either map > 0) whose label differs; None without a previous map.

    Both maps are ``(k, j, i)`` label arrays on the same grid. Two empty maps give 0.0.
    """
    if previous is None:
        return None
    fg = (previous > 0) | (current > 0)
    n = int(fg.sum())
    return float((previous[fg] != current[fg]).sum() / n) if n else 0.0


def select(scores: dict[str, float | None], empty: set[str], keep: float) -> dict[str, tuple[bool, str]]:
    """Case -> (kept, reason). Empty pseudo-labels are dropped; of the rest, round(keep * n) (>= 1) with
    the lowest score are kept (None scores, i.e. round 1, keep all). Ties break by case id."""
    out = {c: (False, "empty pseudo-label") for c in empty}
    rest = [c for c in sorted(scores) if c not in empty]
    if any(scores[c] is None for c in rest):
        out.update({c: (True, "round 1: keep all") for c in rest})
        return out
    n_keep = max(1, math.floor(keep * len(rest) + 0.5)) if rest else 0
    ranked = sorted(rest, key=lambda c: (scores[c], c))
    out.update({c: (True, "stable") for c in ranked[:n_keep]})
    out.update({c: (False, "least stable") for c in ranked[n_keep:]})
    return out


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, default=str) + "\n"))


def _configs(cfg: TrainConfig, semi: SemiConfig) -> dict[str, TrainConfig]:
    """The models trained each round: "small" (deployed) and, for --teacher big, a 2x wider "teacher"."""
    if semi.steps_per_epoch:
        cfg = replace(cfg, coarse=replace(cfg.coarse, steps_per_epoch=semi.steps_per_epoch),
                      fine=replace(cfg.fine, steps_per_epoch=semi.steps_per_epoch))
    models = {"small": cfg}
    if semi.teacher == "big":
        def wide(spec: NetTraining) -> NetTraining:
            return replace(spec, unet=replace(spec.unet, base=spec.unet.base * 2))

        models["teacher"] = replace(cfg, coarse=wide(cfg.coarse), fine=wide(cfg.fine))
    return models


def pseudo_label(weights: Path, images: dict[str, Path], previous: Path | None, out: Path,
                 device: str) -> tuple[dict[str, float | None], set[str]]:
    """Write ``out/<Case>.nii.gz`` for every image (reusing ones already there); returns the stability
    scores against ``previous/<Case>.nii.gz`` (None where there is no previous folder) and the empty cases."""
    model = Predictor.load(weights, device=device)
    out.mkdir(parents=True, exist_ok=True)
    scores: dict[str, float | None] = {}
    empty: set[str] = set()
    from tqdm import tqdm

    for case, path in tqdm(images.items(), desc=f"pseudo-labels {out.parent.name}", unit="case", leave=False):
        target = out / f"{case}.nii.gz"
        image, geo = read_image(path)
        if target.is_file():
            labels, _ = read_image(target)
        else:
            labels, _ = model.predict(image, geo.spacing_kji, geo.direction)
            write_label(labels, geo, target)
        prev = read_image(previous / f"{case}.nii.gz")[0] if previous is not None else None
        scores[case] = stability(prev, labels)
        if not labels.any():
            empty.add(case)
    return scores, empty


def write_selection(path: Path, scores: dict[str, float | None], chosen: dict[str, tuple[bool, str]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Name", "score", "kept", "reason"])
        for case in sorted(chosen):
            score = scores.get(case)
            w.writerow([case, "" if score is None else f"{score:.6f}", int(chosen[case][0]), chosen[case][1]])
    tmp.replace(path)


def train_model(name: str, cfg: TrainConfig, cases: list[Case], n_labeled: int, semi: SemiConfig, k: int,
                rdir: Path, device: torch.device) -> tuple[Path, list[dict]]:
    """Train coarse then fine for one model of round ``k`` on ``cases`` (the labeled ones first);
    export ``rdir/<weights|teacher>/``."""
    weights = case_weights(n_labeled, len(cases), semi.labeled_share)
    previous = rdir.parent / f"round_{k - 1}" / ("weights" if name == "small" else "teacher")
    init = previous if semi.warm_start and k > 0 else None
    rng = np.random.default_rng([semi.seed, k, 0 if name == "small" else 1])
    torch.manual_seed(semi.seed * 1000 + k)
    ckpt = rdir / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    fine_pairs, fine_weights = fine_data(cases, weights)
    nets = {
        "coarse": train_net("coarse", [(c.coarse_x, c.coarse_y) for c in cases], cfg.coarse,
                            max(semi.epochs // 3, 1), rng, device, rows, ckpt / f"{name}_coarse.pt", True, weights,
                            init and init / "coarse.pt"),
        "fine": train_net("fine", fine_pairs, cfg.fine, semi.epochs, rng, device, rows, ckpt / f"{name}_fine.pt",
                          True, fine_weights, init and init / "fine.pt"),
    }
    staging = rdir / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    export(nets, cfg, staging, {"round": k, "model": name, "cases": len(cases), "seed": semi.seed,
                                "epochs": semi.epochs})
    final = rdir / ("weights" if name == "small" else "teacher")
    shutil.rmtree(final, ignore_errors=True)
    (staging / "weights").replace(final)
    shutil.rmtree(staging)
    return final, [{"round": k, "model": name, **r} for r in rows]


def write_curves(out: Path, rows: list[dict]) -> None:
    """``curves.csv`` and ``curves.png`` (loss per epoch; one line per round/model/net)."""
    with open(out / ".curves.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (out / ".curves.csv.tmp").replace(out / "curves.csv")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, net in zip(axes, ("coarse", "fine"), strict=True):
        keys = sorted({(r["round"], r["model"]) for r in rows if r["net"] == net})
        for rk, model in keys:
            pts = [(r["step"], r["loss"]) for r in rows if r["net"] == net and r["round"] == rk and r["model"] == model]
            ax.plot(*zip(*pts, strict=True), marker=".", label=f"round {rk} {model}")
        ax.set_title(f"{net} network")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (CE + Dice)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / ".curves.tmp.png", dpi=80)
    plt.close(fig)
    (out / ".curves.tmp.png").replace(out / "curves.png")


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{**r, "round": int(r["round"]), "step": int(r["step"]), "loss": float(r["loss"]),
                 "seconds": float(r["seconds"])} for r in csv.DictReader(f)]


def _load_inputs(args: argparse.Namespace, cfg: TrainConfig) -> tuple[list[Case], dict[str, Path]]:
    """Validate everything (labeled pairs, label values, unlabeled images) before anything is written."""
    pairs = validate(args.images, args.labels)
    cases = [precompute(c, i, lab, cfg) for c, i, lab in pairs]
    return cases, validate_unlabeled(args.unlabeled)


def run_semi(args: argparse.Namespace, argv: list[str], device: torch.device, threads: int) -> int:
    """The semi-supervised run (see the module docstring). Exit 0, 2 on bad data/arguments, 130 on Ctrl-C."""
    try:
        return _run(args, argv, device, threads)
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume from the last epoch in {args.out}",
              file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, argv: list[str], device: torch.device, threads: int) -> int:
    semi = SemiConfig(args.rounds, args.keep, args.teacher, args.epochs, args.seed, args.steps_per_epoch,
                      args.labeled_share, args.warm_start)
    models = _configs(train_config(args), semi)
    start = time.perf_counter()
    try:
        labeled, unlabeled = _load_inputs(args, models["small"])
    except (DataError, NiftiError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("validated %d labeled, %d unlabeled cases in %.0f s (%d threads, %s)", len(labeled),
             len(unlabeled), time.perf_counter() - start, threads, device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "run.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"rounds": {}}
    manifest.update({
        "status": "running", "command": " ".join(["python -m predictor.train", *argv]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "seeds": {"numpy_round_k_model": f"default_rng([{semi.seed}, k, 0 small | 1 teacher])",
                  "torch_round_k": f"{semi.seed} * 1000 + k"},
        "device": str(device), "threads": threads,
        "labeled": len(labeled), "unlabeled": len(unlabeled),
    })
    manifest["rounds"] = {str(k): v for k, v in manifest["rounds"].items()}
    _write_json(manifest_path, manifest)
    curves = _read_rows(out / "curves.csv")
    for k in range(semi.rounds + 1):
        rdir = out / f"round_{k}"
        if (rdir / "done.json").is_file():
            log.info("round %d: done already, skipped", k)
            continue
        clock = time.perf_counter()
        curves = [r for r in curves if r["round"] != k]
        cases = list(labeled)
        info: dict = {"labeled": len(labeled)}
        if k > 0:
            prev = out / f"round_{k - 1}"
            source = prev / ("teacher" if semi.teacher == "big" else "weights")
            scores, empty = pseudo_label(source, unlabeled, prev / "pseudo" if k > 1 else None,
                                         rdir / "pseudo", args.device)
            chosen = select(scores, empty, semi.keep)
            write_selection(rdir / "selection.csv", scores, chosen)
            kept = [c for c in sorted(chosen) if chosen[c][0]]
            cases += [precompute(c, unlabeled[c], rdir / "pseudo" / f"{c}.nii.gz", models["small"]) for c in kept]
            info.update({"pseudo_kept": len(kept), "pseudo_dropped": len(chosen) - len(kept)})
            log.info("round %d: kept %d of %d pseudo-labeled cases", k, len(kept), len(chosen))
        for name, cfg in models.items():
            _, rows = train_model(name, cfg, cases, len(labeled), semi, k, rdir, device)
            curves += rows
        with open(rdir / "train_log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
            w.writeheader()
            w.writerows([r for r in curves if r["round"] == k])
        write_curves(out, curves)
        shutil.rmtree(rdir / "ckpt", ignore_errors=True)
        info["seconds"] = round(time.perf_counter() - clock, 1)
        _write_json(rdir / "done.json", info)
        manifest["rounds"][str(k)] = info
        _write_json(manifest_path, manifest)
        log.info("round %d done in %.0f s", k, info["seconds"])
    last = out / f"round_{semi.rounds}" / "weights"
    staging = out / ".weights.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(last, staging)
    shutil.rmtree(out / "weights", ignore_errors=True)
    staging.replace(out / "weights")
    manifest.update({"status": "complete", "exported": str(out / "weights"), "from_round": semi.rounds,
                     "seconds_this_invocation": round(time.perf_counter() - start, 1)})
    _write_json(manifest_path, manifest)
    log.info("exported %s (round %d)", out / "weights", semi.rounds)
    return 0
