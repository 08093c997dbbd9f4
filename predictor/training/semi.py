"""Semi-supervised training: pseudo-labels from unlabeled scans, filtered by a measure of their quality,
iterated, and optionally distilled from a wider teacher. Entry point: ``python -m predictor.train ...
--unlabeled DIR`` (the library: :func:`run_semi`).

Rounds (``--rounds K`` gives rounds 0..K):

- round 0 trains on the labeled scans only;
- round k >= 1: (1) round k-1's model (both stages, through :class:`predictor.pipeline.Predictor` on its
  exported weights; with ``--teacher big`` round k-1's wider teacher) predicts a pseudo-label for every
  unlabeled scan, and three measures of each (:class:`Measures`): ``stability``, the fraction of
  foreground voxels (union of this and the previous round's pseudo-label) whose label changed since round
  k-1's pseudo-label (None in round 1: there is none); ``disagreement``, the same fraction between the
  two inference scales' own labels (the pipeline's ``fine_scales``; None with one scale); ``uncertainty``,
  1 - the mean max-probability over the predicted foreground; 0 = best for all three. (2) ``--filter``
  picks the measure; the ``round(keep * n)`` best cases are kept (at least 1), pseudo-labels with no organ
  are always dropped, a None measure keeps all (``stability`` in round 1); (3) the model is trained on the
  labeled plus the kept pseudo-labeled scans: ``--labeled-share F``, a patch comes from a labeled scan
  with probability F, else from a pseudo-labeled one (0: every scan equally likely; 1: labeled scans
  only, no pseudo-labels made: training on for the same steps, the equal-steps control);
  ``--warm-start`` (default): from round k-1's weights, ``--no-warm-start``: from random.
- ``--teacher big``: a ``--teacher-width`` times wider teacher is trained on the same data in every round
  whose pseudo-labels a next round uses (k < K) and makes them; the small model is what is exported, and
  is trained only where it is used: in round K, and in every round with ``--warm-start`` (round k+1 starts
  from it). ``--rounds 1 --teacher big --no-warm-start`` is FLARE22's recipe: a wide teacher on the labeled
  scans, then a small student from scratch on labeled + pseudo-labeled scans.

RUN_DIR layout::

    run.json                      arguments, versions, seeds, per-round times, "status": running|complete
    curves.csv, curves.png        loss per epoch, all rounds and networks
    weights/                      deployable = the last round's small model (Predictor.load reads it)
    round_<k>/weights/            that round's small model;  round_<k>/teacher/ (--teacher big)
    round_<k>/pseudo/<Case>.nii.gz   pseudo-labels made at the start of round k (k >= 1)
    round_<k>/measures/<Case>.json   their disagreement and uncertainty (reused with the pseudo-label)
    round_<k>/selection.csv       Name, score (the --filter measure), kept, reason, and all three measures
    round_<k>/train_log.csv       that round's loss rows
    round_<k>/done.json           written last: a round with it is skipped on a rerun
    round_<k>/ckpt/               per-epoch checkpoints (deleted when the round is done)

Resuming: rerun the same command with the same ``--out``; finished rounds are skipped, an unfinished one
continues from its last epoch checkpoint, and pseudo-labels already written are reused.

Bad data (label on another grid, labels outside 0..13, image without label, unreadable file, also in
--unlabeled) raises DataError naming the file before anything is written (the command line: exit 2, one
line).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from challenge.files import atomic_path, atomic_write
from challenge.nifti import read_image, write_label

from ..pipeline import Predictor
from .config import NetTraining, RunConfig, SemiConfig, TrainConfig
from .data import Case, fine_data, load_cases, precompute, validate_unlabeled
from .loop import NetRun, export, train_net, write_csv

log = logging.getLogger(__name__)

CURVE_FIELDS = ["round", "model", "net", "step", "loss", "seconds"]


def case_weights(n_labeled: int, n_total: int, labeled_share: float) -> np.ndarray | None:
    """Per-case draw probabilities: the first ``n_labeled`` cases share ``labeled_share``, the rest the
    remainder. None (uniform over cases) when the share is 0 or there are no pseudo-labeled cases."""
    n_pseudo = n_total - n_labeled
    if labeled_share <= 0 or n_pseudo <= 0 or n_labeled <= 0:
        return None
    return np.array([labeled_share / n_labeled] * n_labeled + [(1 - labeled_share) / n_pseudo] * n_pseudo)


def stability(previous: np.ndarray | None, current: np.ndarray) -> float | None:
    """Fraction of the foreground (either map > 0) whose label differs; None without a previous map.

    Both maps are ``(k, j, i)`` label arrays on the same grid. Two empty maps give 0.0.
    """
    if previous is None:
        return None
    fg = (previous > 0) | (current > 0)
    n = int(fg.sum())
    return float((previous[fg] != current[fg]).sum() / n) if n else 0.0


FILTERS = ("stability", "disagreement", "uncertainty")  # --filter: the measure that ranks pseudo-labels


@dataclass(frozen=True)
class Measures:
    """How trustworthy one pseudo-label looks, without its truth; each 0 = best, None = not measurable.

    ``stability``: changed share of the foreground since the previous round's pseudo-label (:func:`stability`);
    ``disagreement``: the same between the inference scales' own labels on the fine grid;
    ``uncertainty``: 1 - the mean max-probability over the voxels predicted as an organ (fine grid)."""

    stability: float | None = None
    disagreement: float | None = None
    uncertainty: float | None = None

    def get(self, name: str) -> float | None:
        """The measure called ``name`` (one of :data:`FILTERS`)."""
        if name not in FILTERS:
            raise ValueError(f"filter must be one of {FILTERS}, got {name!r}")
        return getattr(self, name)


def scale_measures(probs: list[torch.Tensor]) -> tuple[float | None, float | None]:
    """(disagreement, uncertainty) of the fine stage's per-scale class probabilities ``(C, D, H, W)``, the
    first on the output grid, the others resized onto it. Disagreement: share of the voxels labelled an
    organ at either scale whose argmax differs (None with one scale); uncertainty: 1 - the mean max of the
    averaged probabilities where their argmax is an organ. Both 0.0 where nothing is an organ."""
    from ..resample import resize_image

    size = tuple(probs[0].shape[1:])
    maps = [probs[0].float()] + [resize_image(q.float(), size) for q in probs[1:]]  # type: ignore[arg-type]
    mean = torch.stack(maps).mean(0)
    top, labels = mean.max(0)
    fg = labels > 0
    uncertainty = 1.0 - float(top[fg].mean()) if bool(fg.any()) else 0.0
    if len(maps) < 2:
        return None, uncertainty
    a, b = maps[0].argmax(0), maps[1].argmax(0)
    union = (a > 0) | (b > 0)
    n = int(union.sum())
    return (float((a != b)[union].sum()) / n if n else 0.0), uncertainty


class _Recording:
    """A Predictor whose fine stage's per-scale probabilities are kept for :func:`scale_measures` (the labels
    are the Predictor's own, unchanged). Wraps the Predictor's per-scale pass on this instance only."""

    def __init__(self, model: Predictor) -> None:
        self.model = model
        self.probs: list[torch.Tensor] = []
        original = model._probabilities

        def record(net, x):  # noqa: ANN001, ANN202 - the Predictor's own signature
            prob = original(net, x)
            self.probs.append(prob.detach().float().clone())  # the caller adds the next scale in place
            return prob

        model._probabilities = record  # type: ignore[method-assign]

    def predict(self, image: np.ndarray, geo_spacing: tuple[float, float, float], direction: tuple[float, ...]
                ) -> tuple[np.ndarray, tuple[float | None, float | None]]:
        """Labels of one scan and their (disagreement, uncertainty); (0.0, 0.0) where no ROI is found."""
        self.probs = []
        labels, _ = self.model.predict(image, geo_spacing, direction)
        return labels, scale_measures(self.probs) if self.probs else (0.0, 0.0)


def select(scores: dict[str, float | None], empty: set[str], keep: float, measure: str = "stability"
           ) -> dict[str, tuple[bool, str]]:
    """Case -> (kept, reason). Empty pseudo-labels are dropped; of the rest, round(keep * n) (>= 1) with
    the lowest ``measure`` score are kept (a None score, e.g. stability in round 1, keeps all). Ties break
    by case id."""
    out = {c: (False, "empty pseudo-label") for c in empty}
    rest = [c for c in sorted(scores) if c not in empty]
    if any(scores[c] is None for c in rest):
        out.update({c: (True, f"no {measure} measure: keep all") for c in rest})
        return out
    n_keep = max(1, math.floor(keep * len(rest) + 0.5)) if rest else 0
    ranked = sorted(rest, key=lambda c: (scores[c], c))
    out.update({c: (True, f"best {measure}") for c in ranked[:n_keep]})
    out.update({c: (False, f"worst {measure}") for c in ranked[n_keep:]})
    return out


def round_models(cfg: TrainConfig, semi: SemiConfig) -> dict[str, TrainConfig]:
    """The models a round may train: "small" (deployed) and, for --teacher big, a ``teacher_width`` times
    wider "teacher" (base channels rounded to an even number, at least the small model's)."""
    if semi.steps_per_epoch:
        cfg = replace(cfg, coarse=replace(cfg.coarse, steps_per_epoch=semi.steps_per_epoch),
                      fine=replace(cfg.fine, steps_per_epoch=semi.steps_per_epoch))
    models = {"small": cfg}
    if semi.teacher == "big":
        def wide(spec: NetTraining) -> NetTraining:
            base = max(spec.unet.base, 2 * round(spec.unet.base * semi.teacher_width / 2))
            return replace(spec, unet=replace(spec.unet, base=base))

        models["teacher"] = replace(cfg, coarse=wide(cfg.coarse), fine=wide(cfg.fine))
    return models


def trained_in_round(name: str, k: int, semi: SemiConfig) -> bool:
    """Whether round ``k`` trains model ``name``: the teacher where a next round uses its pseudo-labels
    (k < rounds); the small model in the last round, and in every round when it makes the pseudo-labels
    (no big teacher) or the next round warm-starts from it."""
    if name == "teacher":
        return k < semi.rounds
    return k == semi.rounds or semi.teacher == "small" or semi.warm_start


def pseudo_label(weights: Path, images: dict[str, Path], previous: Path | None, out: Path, *,
                 device: str = "auto", progress: bool = True) -> tuple[dict[str, Measures], set[str]]:
    """Write ``out/pseudo/<Case>.nii.gz`` and ``out/measures/<Case>.json`` for every image (reusing both
    where there); returns each case's :class:`Measures` (stability against ``previous/<Case>.nii.gz``, None
    without a previous folder) and the cases whose pseudo-label holds no organ."""
    model = _Recording(Predictor.load(weights, device=device))
    measures: dict[str, Measures] = {}
    empty: set[str] = set()
    from tqdm import tqdm

    for case, path in tqdm(images.items(), desc=f"pseudo-labels {out.name}", unit="case", leave=False,
                           disable=not progress):
        target, side = out / "pseudo" / f"{case}.nii.gz", out / "measures" / f"{case}.json"
        if target.is_file() and side.is_file():
            labels = read_image(target)[0]
            known = json.loads(side.read_text())
            disagreement, uncertainty = known["disagreement"], known["uncertainty"]
        else:
            image, geo = read_image(path)
            labels, (disagreement, uncertainty) = model.predict(image, geo.spacing_kji, geo.direction)
            write_label(labels, geo, target)
            _write_json(side, {"disagreement": disagreement, "uncertainty": uncertainty})
        prev = read_image(previous / f"{case}.nii.gz")[0] if previous is not None else None
        measures[case] = Measures(stability(prev, labels), disagreement, uncertainty)
        if not labels.any():
            empty.add(case)
    return measures, empty


def write_selection(path: Path, measures: dict[str, Measures], chosen: dict[str, tuple[bool, str]],
                    measure: str) -> None:
    """``selection.csv``: Name, score (the ``measure`` that ranked the case; blank where None), kept,
    reason, and the three measures."""
    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    def write(handle) -> None:
        w = csv.writer(handle)
        w.writerow(["Name", "score", "kept", "reason", *FILTERS])
        for case in sorted(chosen):
            m = measures.get(case, Measures())
            w.writerow([case, cell(m.get(measure)), int(chosen[case][0]), chosen[case][1],
                        *(cell(m.get(f)) for f in FILTERS)])

    atomic_write(path, write)


def write_curves(out: Path, rows: list[dict]) -> None:
    """``curves.csv`` and ``curves.png`` (loss per epoch; one line per round/model/net)."""
    write_csv(out / "curves.csv", CURVE_FIELDS, rows)
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
    with atomic_path(out / "curves.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{**r, "round": int(r["round"]), "step": int(r["step"]), "loss": float(r["loss"]),
                 "seconds": float(r["seconds"])} for r in csv.DictReader(f)]


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, default=str) + "\n"))


def _model_folder(name: str) -> str:
    return "weights" if name == "small" else "teacher"


@dataclass(eq=False, kw_only=True)
class _SemiRun:
    """A semi-supervised run in progress: its settings, its validated inputs, run.json and the loss rows."""

    run: RunConfig
    semi: SemiConfig
    models: dict[str, TrainConfig]
    device: torch.device
    progress: bool
    labeled: list[Case]
    unlabeled: dict[str, Path]
    manifest: dict = field(default_factory=dict)
    curves: list[dict] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.run.out

    def start(self, threads: int) -> None:
        """run.json ("status": "running", earlier rounds kept) and the loss rows of earlier invocations."""
        path = self.out / "run.json"
        manifest = json.loads(path.read_text()) if path.is_file() else {"rounds": {}}
        given = {**asdict(self.run), **asdict(self.semi)}
        arguments = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if k != "command"}
        manifest.update({
            "status": "running", "command": self.run.command, "arguments": arguments,
            "config": asdict(self.models["small"]),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
            "seeds": {"numpy_round_k_model": f"default_rng([{self.run.seed}, k, 0 small | 1 teacher])",
                      "torch_round_k": f"{self.run.seed} * 1000 + k"},
            "device": str(self.device), "threads": threads,
            "labeled": len(self.labeled), "unlabeled": len(self.unlabeled),
        })
        manifest["rounds"] = {str(k): v for k, v in manifest["rounds"].items()}
        self.manifest = manifest
        _write_json(path, manifest)
        self.curves = _read_rows(self.out / "curves.csv")

    def round(self, k: int) -> None:
        """Round ``k``: pseudo-labels (k >= 1), every model trained and exported, then done.json last."""
        rdir = self.out / f"round_{k}"
        if (rdir / "done.json").is_file():
            log.info("round %d: done already, skipped", k)
            return
        clock = time.perf_counter()
        self.curves = [r for r in self.curves if r["round"] != k]
        cases = list(self.labeled)
        info: dict = {"labeled": len(self.labeled)}
        if k > 0 and self.semi.labeled_share < 1:
            pseudo, counts = self._pseudo_cases(k, rdir)
            cases += pseudo
            info.update(counts)
        for name, cfg in self.models.items():
            if trained_in_round(name, k, self.semi):
                self.curves += self._train_model(name, cfg, cases, k)
        write_csv(rdir / "train_log.csv", CURVE_FIELDS, [r for r in self.curves if r["round"] == k])
        write_curves(self.out, self.curves)
        shutil.rmtree(rdir / "ckpt", ignore_errors=True)
        info["seconds"] = round(time.perf_counter() - clock, 1)
        _write_json(rdir / "done.json", info)
        self.manifest["rounds"][str(k)] = info
        _write_json(self.out / "run.json", self.manifest)
        log.info("round %d done in %.0f s", k, info["seconds"])

    def _pseudo_cases(self, k: int, rdir: Path) -> tuple[list[Case], dict]:
        """Pseudo-label the unlabeled scans with round k-1's model, select by ``--filter``, precompute the
        kept ones."""
        prev = self.out / f"round_{k - 1}"
        source = prev / ("teacher" if self.semi.teacher == "big" else "weights")
        measures, empty = pseudo_label(source, self.unlabeled, prev / "pseudo" if k > 1 else None, rdir,
                                       device=str(self.device), progress=self.progress)
        scores = {c: m.get(self.semi.filter) for c, m in measures.items()}
        chosen = select(scores, empty, self.semi.keep, self.semi.filter)
        write_selection(rdir / "selection.csv", measures, chosen, self.semi.filter)
        kept = [c for c in sorted(chosen) if chosen[c][0]]
        cases = [precompute(c, self.unlabeled[c], rdir / "pseudo" / f"{c}.nii.gz", self.models["small"]) for c in kept]
        log.info("round %d: kept %d of %d pseudo-labeled cases (%s)", k, len(kept), len(chosen), self.semi.filter)
        return cases, {"pseudo_kept": len(kept), "pseudo_dropped": len(chosen) - len(kept)}

    def _train_model(self, name: str, cfg: TrainConfig, cases: list[Case], k: int) -> list[dict]:
        """Train coarse then fine for one model of round ``k`` on ``cases`` (the labeled ones first);
        export ``round_<k>/<weights|teacher>/``; its loss rows."""
        run, semi, rdir = self.run, self.semi, self.out / f"round_{k}"
        weights = case_weights(len(self.labeled), len(cases), semi.labeled_share)
        init = self.out / f"round_{k - 1}" / _model_folder(name) if semi.warm_start and k > 0 else None
        rng = np.random.default_rng([run.seed, k, 0 if name == "small" else 1])
        torch.manual_seed(run.seed * 1000 + k)
        ckpt = rdir / "ckpt"
        ckpt.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        fine_pairs, fine_weights = fine_data(cases, weights)
        coarse = NetRun("coarse", [(c.coarse_x, c.coarse_y) for c in cases], cfg.coarse, max(run.epochs // 3, 1),
                        weights=weights, init=init and init / "coarse.pt", checkpoint=ckpt / f"{name}_coarse.pt")
        fine = NetRun("fine", fine_pairs, cfg.fine, run.epochs, weights=fine_weights,
                      init=init and init / "fine.pt", checkpoint=ckpt / f"{name}_fine.pt")
        nets = {net.name: train_net(net, rng, self.device, log_rows=rows, progress=self.progress)
                for net in (coarse, fine)}
        staging = rdir / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        export(nets, cfg, staging, {"round": k, "model": name, "cases": len(cases), "seed": run.seed,
                                    "epochs": run.epochs})
        final = rdir / _model_folder(name)
        shutil.rmtree(final, ignore_errors=True)
        (staging / "weights").replace(final)
        shutil.rmtree(staging)
        return [{"round": k, "model": name, **r} for r in rows]

    def finish(self, start: float) -> Path:
        """Copy the last round's small model to ``out/weights`` (folder swap); run.json "complete"."""
        last = self.out / f"round_{self.semi.rounds}" / "weights"
        staging = self.out / ".weights.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(last, staging)
        shutil.rmtree(self.out / "weights", ignore_errors=True)
        staging.replace(self.out / "weights")
        self.manifest.update({"status": "complete", "exported": str(self.out / "weights"),
                              "from_round": self.semi.rounds,
                              "seconds_this_invocation": round(time.perf_counter() - start, 1)})
        _write_json(self.out / "run.json", self.manifest)
        log.info("exported %s (round %d)", self.out / "weights", self.semi.rounds)
        return self.out / "weights"


def run_semi(cfg: TrainConfig, run: RunConfig, semi: SemiConfig, *, device: torch.device, threads: int,
             progress: bool = True) -> Path:
    """The semi-supervised run (see the module docstring); returns ``run.out/weights``.

    Everything (labeled pairs, label values, unlabeled images) is validated before anything is written:
    DataError naming the file. A KeyboardInterrupt propagates; rerunning resumes (finished rounds are
    skipped, an unfinished network continues from its last epoch checkpoint)."""
    models = round_models(cfg, semi)
    start = time.perf_counter()
    labeled = load_cases(run.images, run.labels, models["small"])
    unlabeled = validate_unlabeled(semi.unlabeled)
    log.info("validated %d labeled, %d unlabeled cases in %.0f s (%d threads, %s)", len(labeled),
             len(unlabeled), time.perf_counter() - start, threads, device)
    state = _SemiRun(run=run, semi=semi, models=models, device=device, progress=progress, labeled=labeled,
                     unlabeled=unlabeled)
    state.start(threads)
    for k in range(semi.rounds + 1):
        state.round(k)
    return state.finish(start)
