"""Score prediction files against ground-truth files: one case (:func:`score_case`) or a folder
(:func:`score_folder`, which writes ``metrics.csv`` and ``summary.json``).

A case is keyed by its id: GT ``GT_DIR/<Case>.nii.gz``, prediction ``PRED_DIR/<Case>.nii.gz``. Every GT
case gets a row, whatever happened to its prediction. ``status`` is one of ``ok``, ``ok; warning: ...``,
``missing``, ``invalid: ...`` (a missing or invalid prediction scores 0 for every organ in the GT and 1
for every organ absent from it) or ``error: ...`` (the evaluator itself failed on that case; values NaN).
Values are kept at full precision; round only for display.

Where the cases are scored: this process (``workers=1``), a local process pool (the default), or the
workers of a Dask cluster (``client=``, a ``distributed.Client``). The results are the same bit for bit
either way: every engine runs the same :func:`score_case` on the same files. Only the two *paths* of a case
travel through Dask, never the ground truth or a prediction: each worker reads the files itself, so the
workers must see the folders at the same (absolute) paths as this process: a LocalCluster, or a shared file
system mounted alike on every host.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Callable
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from challenge.cases import case_from_label, label_name, list_labels
from challenge.cluster import CONNECT_TIMEOUT_S, ClusterError
from challenge.exitcodes import HostFault
from challenge.files import atomic_write
from challenge.labels import ORGANS
from challenge.nifti import MAX_VOXELS, Geometry, LabelIssues, NiftiError, read_header, read_labels
from challenge.profile import Profile, default
from evaluator.metrics import MODES, Mode, OrganScores, empty_prediction_scores, score_arrays

log = logging.getLogger(__name__)
SUMMARY_COLUMNS = ["DSC_mean", "NSD_mean"]
PROGRESS_MIN_CASES = 4  # a progress bar only for more than a few cases


FLARE22_MEAN = tuple(o.short for o in ORGANS)


class MissingPrediction(ValueError):
    """A prediction is missing and the profile aborts the evaluation then (FLARE23): one line naming it."""


@dataclass
class CaseScore:
    """One case's result: label short name -> value (in the profile's label order), and a status string.
    ``mean_over``: the labels the means count (the profile's ``in_mean`` labels). Plain and picklable."""

    name: str
    dsc: dict[str, float]
    nsd: dict[str, float]
    status: str
    mean_over: tuple[str, ...] = FLARE22_MEAN

    @property
    def dsc_mean(self) -> float:
        return float(np.mean([self.dsc[short] for short in self.mean_over]))

    @property
    def nsd_mean(self) -> float:
        return float(np.mean([self.nsd[short] for short in self.mean_over]))

    def row(self) -> dict:
        """The metrics.csv row: Name, every label's DSC, every label's NSD, DSC_mean, NSD_mean, status."""
        values = {f"{short}_DSC": value for short, value in self.dsc.items()}
        values |= {f"{short}_NSD": value for short, value in self.nsd.items()}
        return {"Name": self.name, **values, "DSC_mean": self.dsc_mean, "NSD_mean": self.nsd_mean,
                "status": self.status}


def _result(name: str, scores: OrganScores, status: str, profile: Profile) -> CaseScore:
    if status == "ok" and scores.warnings:
        status = "ok; warning: " + "; ".join(scores.warnings)
    return CaseScore(name, scores.dsc, scores.nsd, status, tuple(o.short for o in profile.mean_labels))


def _error_result(name: str, reason: str, profile: Profile | None = None) -> CaseScore:
    profile = profile or default()
    nan = {o.short: float("nan") for o in profile.labels}
    return CaseScore(name, dict(nan), dict(nan), f"error: {reason}", tuple(o.short for o in profile.mean_labels))


def _missing_status(pred_path: Path) -> str:
    siblings = [p.name for p in pred_path.parent.glob(pred_path.name[: -len(".nii.gz")] + ".*")
                if p.name != pred_path.name] if pred_path.parent.is_dir() else []
    return f"missing (found {', '.join(sorted(siblings))})" if siblings else "missing"


def score_case(gt_path: str | Path, pred_path: str | Path, mode: str = "flare22", threads: int = 1, *,
               max_voxels: int = MAX_VOXELS, profile: Profile | None = None) -> CaseScore:
    """Score one prediction file against one GT file (both ``<Case>.nii.gz`` label maps).

    A plain function of its arguments, so a process pool or a distributed engine can run it.
    Spacing comes from the GT header (mm, (i, j, k) in the file, used in array order (k, j, i)).
    ``threads``: KD-tree threads for this case (-1 uses every core). The GT may declare at most
    ``max_voxels`` voxels. The prediction's header is checked before its data are read: a shape other than
    the GT's is ``invalid`` at once, and its data are converted to labels in bounded pieces
    (:func:`challenge.nifti.read_labels`), so that a hostile file costs at most a few times the GT's memory.
    Raises NiftiError only when the GT itself cannot be read; every prediction problem is a status.
    ``profile``: the challenge's labels and scoring rules (challenge.profile; default flare22).
    """
    gt_path, pred_path = Path(gt_path), Path(pred_path)
    settings, profile = MODES[mode], profile or default()
    top = profile.max_label
    name = case_from_label(gt_path.name)
    gt_header = read_header(gt_path, max_voxels)
    gt, gt_issues = read_labels(gt_path, gt_header.shape, max_label=top)
    gt_geometry = gt_header.geometry()
    warnings = [f"GT has {gt_issues.outside} voxels outside 0..{top} (ignored)"] if gt_issues.outside else []

    def empty(status: str) -> CaseScore:
        return _result(name, empty_prediction_scores(gt, profile), status, profile)

    if not pred_path.is_file():
        return empty(_missing_status(pred_path))
    try:
        pred_header = read_header(pred_path)
        if pred_header.shape != gt_geometry.shape:  # before any data is inflated
            return empty(f"invalid: shape {pred_header.shape} != GT shape {gt_geometry.shape} (k, j, i)")
        pred, issues = read_labels(pred_path, gt_geometry, max_label=top)
        problem = _check_grid(pred_header.geometry(), gt_geometry, settings.header_mismatch_invalid)
    except NiftiError as err:
        return empty(f"invalid: {_short(err, pred_path)}")
    if problem is not None and problem[0] == "invalid":
        return empty(f"invalid: {problem[1]}")
    if problem is not None:
        warnings.append(problem[1])
    invalid, label_warnings = _label_problems(issues, settings, top)
    if invalid:
        return empty(f"invalid: {invalid}")
    scores = score_arrays(gt, pred, gt_geometry.spacing_kji, settings, threads, profile)
    scores.warnings[:0] = warnings + label_warnings
    return _result(name, scores, "ok", profile)


def _short(err: Exception, path: Path) -> str:
    """The reason without the directory (the CSV row already names the case)."""
    return str(err).replace(str(path), path.name)


def _check_grid(pred_geometry: Geometry, gt_geometry: Geometry, header_invalid: bool) -> tuple[str, str] | None:
    """('invalid'|'warning', reason) for a grid (spacing, origin, direction) that differs from the GT's, else
    None."""
    mismatch = gt_geometry.mismatch(pred_geometry)
    if mismatch is None:
        return None
    if header_invalid:
        return "invalid", f"header differs from the GT: {mismatch}"
    return "warning", f"header differs from the GT ({mismatch}); scored on the arrays as the official code does"


def _label_problems(issues: LabelIssues, mode: Mode, top: int) -> tuple[str | None, list[str]]:
    """(the ``invalid`` reason in strict mode, else None; the warnings in flare22 mode) for the values that
    were not labels 0..``top``."""
    outside = non_integer = None
    if issues.outside:
        outside = f"{issues.outside} voxels with values outside 0..{top}"
        if issues.non_finite:
            outside += f", {issues.non_finite} of them NaN or inf"
    if issues.non_integer:
        non_integer = f"{issues.non_integer} voxels with non-integer values"
    if mode.out_of_range_invalid:
        found = [text for text in (outside, non_integer) if text]
        return ("; ".join(found) if found else None), []
    warnings = [outside + " (ignored, as the official code does)"] if outside else []
    if non_integer:
        warnings.append(non_integer + " (truncated, as the official code does)")
    return None, warnings


@dataclass
class FolderSettings:
    mode: str = "flare22"
    workers: int = 1  # scoring processes
    progress: bool = True
    max_voxels: int = MAX_VOXELS  # the most voxels a GT may declare
    profile: Profile | None = None  # None: flare22

    def case_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`score_case` besides the paths, mode and threads."""
        return {"max_voxels": self.max_voxels, "profile": self.profile}


def score_folder(gt_dir: str | Path, pred_dir: str | Path, out_dir: str | Path, mode: str = "flare22",
                 workers: int | None = None, progress: bool = True, max_voxels: int = MAX_VOXELS, *,
                 client: Any = None, scorer: Callable[..., CaseScore] = score_case,
                 profile: Profile | None = None, cohorts: dict[str, str] | None = None) -> pd.DataFrame:
    """Score every GT case in ``gt_dir`` against ``pred_dir``; write metrics.csv and summary.json to ``out_dir``.

    Returns the metrics table (one row per GT case, sorted by case id). Raises ValueError for a mode
    that does not exist, FileNotFoundError when a folder is missing or ``gt_dir`` holds no case, and
    NiftiError (a ValueError, one line naming the file) when a GT header is unreadable or declares more than
    ``max_voxels`` voxels: every GT header is checked before anything is scored or written.

    ``client``: a ``distributed.Client``: the cases are mapped over the cluster's workers (one KD-tree thread
    each) instead of ``workers`` local processes (then ignored). Only the two paths of each case are sent,
    never the data: the workers read the files at the same absolute paths, so they must see both folders
    there (a LocalCluster, or a shared file system). Before anything is scored, every connected worker is
    asked whether it sees both folders and runs the same evaluator and library versions: ClusterError (one
    line) if not, or if no worker joins within 10 s. A case whose task fails, or whose worker dies (Dask's
    KilledWorker after the scheduler's retries), becomes that case's ``error`` row and the others are still
    scored; a case lost with a dying worker is first scored once more on its own, so that a case that only
    shared a worker with the culprit is not failed with it. HostFault when the scheduler goes away.

    ``scorer``: the function run per case, :func:`score_case`'s signature (tests inject one that fails).
    ``profile``: the challenge's labels and rules (default flare22). Where it says ``missing_prediction =
    "abort"`` (FLARE23), a GT case without a prediction raises :class:`MissingPrediction` before anything is
    scored or written. ``cohorts``: case id -> cohort (evaluator.cohorts), for the per-cohort summary.
    """
    profile = profile or default()
    settings = FolderSettings(mode, workers or os.cpu_count() or 1, progress, max_voxels, profile)
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    gt_dir, pred_dir, out_dir = Path(gt_dir), Path(pred_dir), Path(out_dir)
    for folder, what in ((gt_dir, "--gt"), (pred_dir, "--pred")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} {folder}: no such folder")
    cases = list_labels(gt_dir)
    if not cases:
        raise FileNotFoundError(f"--gt {gt_dir}: no <Case>.nii.gz label maps in it")
    for gt in cases.values():
        read_header(gt, max_voxels)  # GT problems are bad input: found before scoring
    if profile.scoring.missing_prediction == "abort":
        absent = [name for name in cases if not (pred_dir / label_name(name)).is_file()]
        if absent:
            raise MissingPrediction(f"--pred {pred_dir}: no {label_name(absent[0])}"
                                    f"{f' (and {len(absent) - 1} more)' if len(absent) > 1 else ''}; profile "
                                    f"{profile.name} aborts the evaluation on a missing prediction")
    if client is not None:
        gt_dir, pred_dir = gt_dir.absolute(), pred_dir.absolute()  # the workers' working folder is not ours
        cases = {name: gt_dir / path.name for name, path in cases.items()}
        check_workers(client, gt_dir, pred_dir)
    results = _run(cases, pred_dir, settings, client, scorer)
    table = pd.DataFrame([r.row() for r in results])
    extra = _extra_files(cases, pred_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "metrics.csv", lambda f: table.to_csv(f, index=False))
    summary = summarize(table, mode, extra, profile, cohorts)
    atomic_write(out_dir / "summary.json", lambda f: json.dump(summary, f, indent=2, allow_nan=True))
    return table


def _run(cases: dict[str, Path], pred_dir: Path, settings: FolderSettings, client: Any = None,
         scorer: Callable[..., CaseScore] = score_case) -> list[CaseScore]:
    jobs = {name: (gt, pred_dir / label_name(name)) for name, gt in cases.items()}
    bar = tqdm(total=len(jobs), desc="scoring", unit="case", file=sys.stderr,
               disable=not settings.progress or len(jobs) < PROGRESS_MIN_CASES)
    results: dict[str, CaseScore] = {}
    if client is not None:
        results = _run_on_cluster(client, jobs, settings, scorer, bar.update)
    elif settings.workers <= 1 or len(jobs) == 1:
        for name, (gt, pred) in jobs.items():
            results[name] = _guarded(name, settings.profile, scorer, gt, pred, settings.mode, -1,
                                     **settings.case_options())
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(settings.workers, len(jobs))) as pool:
            futures = {pool.submit(scorer, gt, pred, settings.mode, 1, **settings.case_options()): name
                       for name, (gt, pred) in jobs.items()}
            for future in as_completed(futures):
                name = futures[future]
                results[name] = _guarded(name, settings.profile, future.result)
                bar.update()
    bar.close()
    return [results[name] for name in sorted(results)]


# --- on a Dask cluster ---------------------------------------------------------------------------------------------

def worker_view(gt_dir: str, pred_dir: str) -> dict:
    """What a Dask worker sees: whether both folders exist at these paths, and its library versions."""
    return {"gt": os.path.isdir(gt_dir), "pred": os.path.isdir(pred_dir), "versions": versions()}


def check_workers(client: Any, gt_dir: Path, pred_dir: Path) -> None:
    """ClusterError (one line) unless a worker joins within 10 s and every connected worker sees both folders
    at these paths and runs the evaluator and libraries of this process (a worker on other versions could give
    other numbers). A worker that joins later is not asked."""
    try:
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        views = client.run(worker_view, str(gt_dir), str(pred_dir))
    except Exception as err:  # noqa: BLE001  (a timeout, or workers that cannot import the evaluator)
        raise ClusterError(f"the Dask workers cannot score: {_reason(err)[:200]}") from None
    ours = versions()
    for address, view in sorted(views.items()):
        for key, folder, what in (("gt", gt_dir, "--gt"), ("pred", pred_dir, "--pred")):
            if not view[key]:
                raise ClusterError(f"Dask worker {address} does not see {what} {folder}: the workers must see the "
                                   "folders at the same paths (a shared file system)")
        differ = [f"{k} {v} (here {ours.get(k)})" for k, v in sorted(view["versions"].items())
                  if ours.get(k) != v and k != "python"]
        if differ:
            raise ClusterError(f"Dask worker {address} runs other versions: {', '.join(differ)}")


def _run_on_cluster(client: Any, jobs: dict[str, tuple[Path, Path]], settings: FolderSettings,
                    scorer: Callable[..., CaseScore], done: Callable[[], object]) -> dict[str, CaseScore]:
    """Map ``scorer`` over the cluster, gathering the results as they complete. A case lost with a dying worker
    is scored once more alone (Dask counts a death against every task the worker held, queued ones too)."""
    from distributed import as_completed as completed

    names = list(jobs)
    futures = client.map(scorer, [str(jobs[n][0]) for n in names], [str(jobs[n][1]) for n in names],
                         mode=settings.mode, threads=1, **settings.case_options(), pure=False)
    by_key = {future.key: name for future, name in zip(futures, names, strict=True)}
    results: dict[str, CaseScore] = {}
    lost: list[str] = []
    try:
        for future in completed(futures):
            name = by_key[future.key]
            result = _collected(client, name, future, retry_lost=True, profile=settings.profile)
            if result is None:
                log.warning("%s: lost with its Dask worker; scoring it once more on its own", name)
                lost.append(name)
                continue
            results[name] = result
            done()
        for name in sorted(lost):
            future = client.submit(scorer, str(jobs[name][0]), str(jobs[name][1]), mode=settings.mode, threads=1,
                                   **settings.case_options(), pure=False)
            futures.append(future)
            results[name] = (_collected(client, name, future, retry_lost=False, profile=settings.profile)
                             or _error_result(name, "lost", settings.profile))
            done()
    finally:
        unfinished = [f for f in futures if not f.done()]
        if unfinished and client.status == "running":
            client.cancel(unfinished)
    return results


def _collected(client: Any, name: str, future: Any, retry_lost: bool,
               profile: Profile | None = None) -> CaseScore | None:
    """The case's result, its ``error`` row, or None for a case lost with its worker when ``retry_lost``.
    HostFault when the scheduler went away."""
    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as err:
        if retry_lost:
            return None
        failures = getattr(err, "allowed_failures", None)
        tries = f" on {failures + 1} workers" if isinstance(failures, int) else ""
        reason = f"the Dask worker died each time it scored this case (KilledWorker: tried alone{tries} after the " \
                 "first round)"
    except CancelledError as err:
        if client.status != "running" or getattr(err, "reason", "") == "scheduler-connection-lost":
            raise HostFault(f"the Dask scheduler went away while scoring ({_reason(err)[:150]})") from None
        reason = f"cancelled on the Dask cluster ({_reason(err)[:150]})"
    except Exception as err:  # noqa: BLE001  (one bad case never stops the others)
        reason = _reason(err)
    log.error("%s: %s", name, reason)
    return _error_result(name, reason, profile)


def _reason(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def _guarded(name: str, row_profile: Profile | None, call: Callable, *args, **kwargs) -> CaseScore:
    """Run one case; an unexpected failure becomes that case's ``error`` row (with ``row_profile``'s labels)
    instead of stopping the run."""
    try:
        return call(*args, **kwargs)
    except Exception as err:  # noqa: BLE001  (one bad case never stops the others)
        reason = _reason(err)
        log.error("%s: %s", name, reason)
        return _error_result(name, reason, row_profile)


def _extra_files(cases: dict[str, Path], pred_dir: Path) -> list[str]:
    """Files in the prediction folder that belong to no GT case (reported, never scored)."""
    expected = {label_name(name) for name in cases}
    return sorted(p.name for p in pred_dir.iterdir() if p.name not in expected)


def status_kind(status: str) -> str:
    """``ok``, ``warning``, ``missing``, ``invalid`` or ``error``."""
    if status.startswith("ok; warning"):
        return "warning"
    return status.split(":")[0].split(" ")[0]


def summarize(table: pd.DataFrame, mode: str, extra: list[str], profile: Profile | None = None,
              cohorts: dict[str, str] | None = None) -> dict:
    """Per-label and overall mean, median and population std (ddof=0) over cases; counts by status; the
    profile's name and hash; with ``cohorts``, the per-cohort means (evaluator.cohorts)."""
    profile = profile or default()
    stats = {}
    for column in profile.metric_columns() + SUMMARY_COLUMNS:
        values = table[column].astype(float)
        stats[column] = {"mean": _num(values.mean()), "median": _num(values.median()),
                         "std": _num(values.std(ddof=0))}
    counts = table["status"].map(status_kind).value_counts().to_dict()
    summary: dict[str, Any] = {
        "mode": mode,
        "profile": profile.identity(),
        "cases": len(table),
        "status_counts": {k: int(counts.get(k, 0)) for k in ("ok", "warning", "missing", "invalid", "error")},
        "DSC_mean": stats["DSC_mean"]["mean"],
        "NSD_mean": stats["NSD_mean"]["mean"],
        "metrics": stats,
        "extra_files_in_pred_dir": extra,
        "versions": versions(),
    }
    if cohorts is not None:
        from evaluator.cohorts import cohort_summary

        summary["cohorts"] = cohort_summary(table, cohorts)
    return summary


def _num(value: float) -> float | None:
    return None if pd.isna(value) else float(value)


def versions() -> dict[str, str]:
    import scipy
    import SimpleITK

    from challenge import __version__

    return {"evaluator": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "SimpleITK": SimpleITK.Version_VersionString(), "pandas": pd.__version__}



