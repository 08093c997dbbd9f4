"""From a results folder to a leaderboard: read each team's efficiency.csv, score its outputs when
metrics.csv is missing, rank the teams, and write the report.

Layout read (the resource monitor writes it):
    RESULTS_DIR/<team>/efficiency.csv     flare22-mode efficiency figures, one row per case
    RESULTS_DIR/<team>/outputs/           <Case>.nii.gz predictions
    RESULTS_DIR/<team>/metrics.csv        written here by the evaluator when missing
    RESULTS_DIR/<team>/cases/<Case>.json  the sampled series, for the curves
    RESULTS_DIR/<team>/run.json           the monitor's settings and host fingerprint
    RESULTS_DIR/<team>/team_status.json   optional {"note": "..."}: why the team has no results
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from challenge.cases import list_labels
from evaluator.ranking import RankingSettings, TeamResults, rank
from evaluator.report import Curves, write_leaderboard

log = logging.getLogger(__name__)
TEAM_STATUS = "team_status.json"


@dataclass
class LeaderboardSettings:
    mode: str = "flare22"
    workers: int | None = None
    ranking: RankingSettings | None = None


def discover_teams(results_dir: Path) -> list[Path]:
    """Team folders: sub-folders holding efficiency.csv, outputs/ or a team_status.json, sorted by name."""
    return sorted(p for p in results_dir.iterdir() if p.is_dir() and any(
        (p / name).exists() for name in ("efficiency.csv", "outputs", TEAM_STATUS)))


def load_team(team_dir: Path, gt_dir: Path, settings: LeaderboardSettings) -> tuple[TeamResults, Curves, dict]:
    """One team's tables, its curves and its run settings; scores its outputs if metrics.csv is missing."""
    from evaluator.scoring import score_folder

    note = ""
    status_file = team_dir / TEAM_STATUS
    if status_file.exists():
        note = str(json.loads(status_file.read_text()).get("note", ""))
    efficiency = _read_csv(team_dir / "efficiency.csv")
    metrics = _read_csv(team_dir / "metrics.csv")
    if metrics is None and (team_dir / "outputs").is_dir():
        log.info("scoring %s", team_dir.name)
        score_folder(gt_dir, team_dir / "outputs", team_dir, mode=settings.mode, workers=settings.workers)
        metrics = _read_csv(team_dir / "metrics.csv")
    if efficiency is None and metrics is None and not note:
        note = "no results"
    run = json.loads((team_dir / "run.json").read_text()) if (team_dir / "run.json").exists() else {}
    return TeamResults(team_dir.name, metrics, efficiency, note), read_curves(team_dir / "cases"), run


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    return pd.read_csv(path, dtype={"Name": str, "status": str}, keep_default_na=True)


def read_curves(cases_dir: Path) -> Curves:
    """Per-case series from the monitor's case JSONs: times (s since start), GPU MiB, CPU %."""
    from resource_monitor.records import read_series

    curves: Curves = {}
    if cases_dir.is_dir():
        for path in sorted(cases_dir.glob("*.json")):
            try:
                curves[path.stem] = read_series(path)
            except (ValueError, KeyError, OSError) as err:
                log.warning("%s: no curves (%s)", path, err)
    return curves


def rank_results(results_dir: Path, gt_dir: Path, out_dir: Path, settings: LeaderboardSettings | None = None) -> Path:
    """Rank every team in ``results_dir`` on the GT cases of ``gt_dir``; returns the index.html path.

    Raises ValueError if there is no GT case or no team.
    """
    settings = settings or LeaderboardSettings()
    cases = list(list_labels(gt_dir))
    if not cases:
        raise ValueError(f"{gt_dir}: no <Case>.nii.gz ground-truth files")
    team_dirs = discover_teams(results_dir)
    if not team_dirs:
        raise ValueError(f"{results_dir}: no team folders (with efficiency.csv or outputs/)")
    teams, curves, runs, metrics = [], {}, {}, {}
    for team_dir in team_dirs:
        team, team_curves, run = load_team(team_dir, gt_dir, settings)
        teams.append(team)
        curves[team.team], runs[team.team] = team_curves, run
        if team.metrics is not None:
            metrics[team.team] = team.metrics
    ranking = rank(teams, cases, settings.ranking or RankingSettings())
    report_settings = {"ranking": vars(ranking.settings), "evaluator_mode": settings.mode,
                       "gt_dir": str(gt_dir), "results_dir": str(results_dir), "cases": len(cases),
                       "monitor_runs": {t: r.get("settings", r) for t, r in runs.items()}}
    return write_leaderboard(ranking, out_dir, metrics, curves, report_settings)
