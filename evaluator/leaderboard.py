"""From a results folder to a leaderboard: read each team's efficiency.csv, score its outputs when
metrics.csv is missing, rank the teams, and write the report.

The folder's layout, and every reader of it, is :mod:`challenge.results`'s (the resource monitor writes
it; the organizer drives both). A folder under the results root that holds none of a team's files is
not a team and is listed as skipped, with the reason, never dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from challenge.cases import list_labels
from challenge.results import TeamDir, discover_teams, read_curves, read_run, read_table, read_team_status
from evaluator.ranking import Ranking, RankingSettings, TeamResults, rank
from evaluator.report import Curves, write_leaderboard

log = logging.getLogger(__name__)


@dataclass
class LeaderboardSettings:
    mode: str = "flare22"
    workers: int | None = None
    ranking: RankingSettings | None = None


@dataclass
class Published:
    """What :func:`rank_results` wrote: the report's path and the ranking behind it."""

    index: Path
    ranking: Ranking

    @property
    def penalised(self) -> list[str]:
        """``team/case: reason`` for every case that took the official worst values."""
        values = self.ranking.values
        hit = values[values["penalised"] != ""]
        teams, cases = hit.index.get_level_values("team"), hit.index.get_level_values("Name")
        return [f"{team}/{case}: {reason}" for team, case, reason in zip(teams, cases, hit["penalised"], strict=True)]


def load_team(team: TeamDir, gt_dir: Path, settings: LeaderboardSettings) -> tuple[TeamResults, Curves, dict]:
    """One team's tables, its curves and its run settings; scores its outputs if metrics.csv is missing."""
    from evaluator.scoring import score_folder

    note = read_team_status(team)
    efficiency = read_table(team.efficiency_csv)
    metrics = read_table(team.metrics_csv)
    if metrics is None and team.outputs.is_dir():
        log.info("scoring %s", team.team)
        score_folder(gt_dir, team.outputs, team.path, mode=settings.mode, workers=settings.workers, progress=False)
        metrics = read_table(team.metrics_csv)
    if efficiency is None and metrics is None and not note:
        note = "no results"
    record = read_run(team)
    run = {"settings": record.settings} if record is not None else {}
    return TeamResults(team.team, metrics, efficiency, note), read_curves(team), run


def skipped_folders(results_dir: Path) -> dict[str, str]:
    """Sub-folders of the results root that are not teams, with the reason."""
    teams = {t.team for t in discover_teams(results_dir)}
    return {p.name: "holds no team results (no efficiency.csv, outputs/ or team_status.json)"
            for p in sorted(results_dir.iterdir()) if p.is_dir() and p.name not in teams}


def rank_results(results_dir: Path, gt_dir: Path, out_dir: Path,
                 settings: LeaderboardSettings | None = None) -> Published:
    """Rank every team in ``results_dir`` on the GT cases of ``gt_dir``; write the leaderboard and its
    report into ``out_dir``.

    Raises ValueError if there is no GT case or no team.
    """
    settings = settings or LeaderboardSettings()
    cases = list(list_labels(gt_dir))
    if not cases:
        raise ValueError(f"{gt_dir}: no <Case>.nii.gz ground-truth files")
    team_dirs = discover_teams(results_dir)
    if not team_dirs:
        raise ValueError(f"{results_dir}: no team folders (with efficiency.csv or outputs/)")
    for name, reason in skipped_folders(results_dir).items():
        log.warning("%s: skipped, %s", name, reason)
    teams, curves, runs, metrics = [], {}, {}, {}
    for team_dir in team_dirs:
        team, team_curves, run = load_team(team_dir, gt_dir, settings)
        teams.append(team)
        curves[team.team], runs[team.team] = team_curves, run
        if team.metrics is not None:
            metrics[team.team] = team.metrics
    ranking = rank(teams, cases, settings.ranking or RankingSettings())
    report_settings = {"ranking": vars(ranking.settings), "evaluator_mode": settings.mode,
                       "gt_dir": gt_dir.name, "results_dir": results_dir.name, "cases": len(cases),
                       "monitor_runs": {t: r.get("settings", r) for t, r in runs.items()}}
    return Published(write_leaderboard(ranking, out_dir, metrics, curves, report_settings), ranking)
