"""From a results folder to a leaderboard: read each team's efficiency.csv, score its outputs when
metrics.csv is missing, rank the teams, and write the report.

The folder's layout, and every reader of it, is :mod:`challenge.results`'s (the resource monitor writes
it; the organizer drives both). A folder under the results root that holds none of a team's files is
not a team and is listed as skipped, with the reason, never dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from challenge.cases import list_labels
from challenge.nifti import MAX_VOXELS, read_header
from challenge.profile import Profile, check_same, default
from challenge.results import (
    RunRecord,
    TeamDir,
    discover_teams,
    read_curves,
    read_json,
    read_run,
    read_table,
    read_team_status,
)
from evaluator.ranking import Ranking, RankingSettings, TeamResults, rank
from evaluator.report import Curves, TeamFiles, write_leaderboard
from evaluator.report_facts import DEFAULT_TITLE

log = logging.getLogger(__name__)


@dataclass
class LeaderboardSettings:
    mode: str = "flare22"
    workers: int | None = None
    ranking: RankingSettings | None = None
    max_voxels: int = MAX_VOXELS  # the most voxels a GT may declare (challenge.nifti)
    title: str = DEFAULT_TITLE  # the challenge's name on the report
    profile: Profile | None = None  # None: flare22
    cohorts: Path | None = None  # a CSV Name,cohort (evaluator.cohorts): per-cohort tables, ranks and tests


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


def load_team(team: TeamDir, gt_dir: Path, settings: LeaderboardSettings,
              client: Any = None) -> tuple[TeamResults, Curves, RunRecord | None]:
    """One team's tables, its curves and its run record (None if there is none or it cannot be read); scores
    its outputs if metrics.csv is missing, on the Dask cluster of ``client`` when one is given
    (:func:`evaluator.scoring.score_folder`).

    A team folder whose files cannot be read is ranked last with the reason as its note, never dropped."""
    from evaluator.scoring import MissingPrediction, score_folder

    try:
        note = read_team_status(team)
        efficiency = read_table(team.efficiency_csv)
        metrics = read_table(team.metrics_csv)
        if metrics is None and team.outputs.is_dir():
            log.info("scoring %s", team.team)
            try:
                score_folder(gt_dir, team.outputs, team.path, mode=settings.mode, workers=settings.workers,
                             progress=False, max_voxels=settings.max_voxels, client=client, profile=settings.profile)
            except MissingPrediction as err:
                return TeamResults(team.team, None, efficiency, f"evaluation aborted: {err}"), {}, read_run(team)
            metrics = read_table(team.metrics_csv)
    except (ValueError, KeyError, UnicodeDecodeError) as err:  # pandas' and json's parse errors are ValueErrors
        return TeamResults(team.team, None, None, f"unreadable results: {_one_line(err)}"), {}, None
    if efficiency is None and metrics is None and not note:
        note = "no results"
    return TeamResults(team.team, metrics, efficiency, note), read_curves(team), read_run(team)


def team_files(team: TeamDir, results: TeamResults, run: RunRecord | None, cases: list[str]) -> TeamFiles:
    """What the report needs of a team beyond its ranked values: its efficiency table, its run record and the
    paths of the per-case plots and logs (``cases/<Case>.log``, ``plots/<Case>.png``) that exist."""
    return TeamFiles(results.efficiency, run,
                     plots={c: team.plot(c) for c in cases if team.plot(c).is_file()},
                     logs={c: team.case_log(c) for c in cases if team.case_log(c).is_file()})


def _one_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:200]


def check_ground_truth(gt_dir: Path, max_voxels: int = MAX_VOXELS) -> list[str]:
    """The GT's case ids, once every GT header is checked (bounded by ``max_voxels``): a bad GT is bad input,
    found before any team is run or scored. ValueError (NiftiError) naming the file."""
    cases = list_labels(gt_dir)
    if not cases:
        raise ValueError(f"{gt_dir}: no <Case>.nii.gz ground-truth files")
    for path in cases.values():
        read_header(path, max_voxels)
    return list(cases)


def skipped_folders(results_dir: Path) -> dict[str, str]:
    """Sub-folders of the results root that are not teams, with the reason."""
    teams = {t.team for t in discover_teams(results_dir)}
    return {p.name: "holds no team results (no efficiency.csv, outputs/ or team_status.json)"
            for p in sorted(results_dir.iterdir()) if p.is_dir() and p.name not in teams}


def rank_results(results_dir: Path, gt_dir: Path, out_dir: Path, settings: LeaderboardSettings | None = None,
                 not_ranked: dict[str, str] | None = None, client: Any = None,
                 calibration: dict | None = None) -> Published:
    """Rank every team in ``results_dir`` on the GT cases of ``gt_dir``; write the leaderboard and its
    report into ``out_dir``.

    ``not_ranked``: name -> reason of what the caller could not turn into a team (e.g. an archive whose
    name is no valid team name); it is reported with the folders of ``results_dir`` that are not teams.
    ``client``: a ``distributed.Client`` that scores the unscored teams on its cluster (the workers must see
    ``gt_dir`` and ``results_dir`` at the same paths); None: the local process pool of ``settings.workers``.
    ``calibration``: the cluster's worker calibration (organizer.cluster_run), shown in the report.
    Raises ValueError if there is no GT case or no team; ClusterError when the cluster's workers cannot score;
    ProfileError when a team was run, or its metrics.csv scored, under another profile than ``settings``';
    CohortError when ``settings.cohorts`` cannot be read or misses a GT case.
    """
    from evaluator.cohorts import cohort_results, read_cohorts

    settings = settings or LeaderboardSettings()
    profile = settings.profile or default()
    cases = check_ground_truth(gt_dir, settings.max_voxels)
    cohorts = read_cohorts(settings.cohorts, cases) if settings.cohorts is not None else None
    team_dirs = discover_teams(results_dir)
    if not team_dirs:
        raise ValueError(f"{results_dir}: no team folders (with efficiency.csv or outputs/)")
    check_profiles(team_dirs, profile)
    skipped = {**(not_ranked or {}), **skipped_folders(results_dir)}
    for name, reason in skipped.items():
        log.warning("%s: not ranked: %s", name, reason)
    teams, curves, files, metrics = [], {}, {}, {}
    for team_dir in team_dirs:
        team, team_curves, run = load_team(team_dir, gt_dir, settings, client)
        teams.append(team)
        curves[team.team], files[team.team] = team_curves, team_files(team_dir, team, run, cases)
        if team.metrics is not None:
            metrics[team.team] = team.metrics
    ranking_settings = replace(settings.ranking or RankingSettings(), profile=profile)
    ranking = rank(teams, cases, ranking_settings)
    by_cohort = cohort_results(ranking, cohorts) if cohorts is not None else None
    report_settings = {"title": settings.title, "profile": profile.identity(), "ranking": ranking_settings.describe(),
                       "evaluator_mode": settings.mode, "gt_dir": gt_dir.name, "results_dir": results_dir.name,
                       "cases": len(cases), "cohorts": settings.cohorts.name if settings.cohorts else None,
                       "monitor_runs": {t: f.run.settings if f.run is not None else {} for t, f in files.items()},
                       "not_ranked": skipped, "calibration": calibration}
    index = write_leaderboard(ranking, out_dir, metrics, curves, report_settings, files, by_cohort)
    return Published(index, ranking)


def check_profiles(team_dirs: list[TeamDir], profile: Profile) -> None:
    """ProfileError (one line) when a team's run.json, or the summary.json of its metrics, names another
    profile than ``profile`` (records from before profiles count as flare22's)."""
    for team in team_dirs:
        run = read_run(team)
        if run is not None:
            check_same(profile, {"profile": run.profile}, f"team {team.team} ({team.run_json.name})")
        if team.metrics_csv.is_file() and team.summary_json.is_file():
            try:
                summary = read_json(team.summary_json)
            except (OSError, ValueError):
                continue
            check_same(profile, summary if isinstance(summary, dict) else None,
                       f"team {team.team}'s metrics ({team.summary_json.name})")
