"""One challenge run, top to bottom: load each team's archive, run it over every case with the
resource monitor, score the outputs, rank the teams and write the report.

A team whose archive fails to load, or whose run cannot start, gets ``team_status.json`` with the
reason: it is ranked last with that status, and the run goes on with the other teams.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from challenge.files import atomic_write
from evaluator.leaderboard import TEAM_STATUS, LeaderboardSettings, rank_results
from resource_monitor.monitor import MonitorError, load_archive, run_team
from resource_monitor.settings import RunSettings

log = logging.getLogger(__name__)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass
class ChallengeSettings:
    cases: Path  # <Case>_0000.nii.gz images
    gt: Path  # <Case>.nii.gz labels
    out: Path  # results/ and leaderboard/ go here
    teams: Path | None = None  # folder of TEAM.tar.gz archives
    local: dict[str, str] = field(default_factory=dict)  # team -> host command (local mode)
    monitor: RunSettings | None = None  # template: timeout, limits, gpu...
    leaderboard: LeaderboardSettings = field(default_factory=LeaderboardSettings)


def find_archives(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


def _mark_failed(team_dir: Path, note: str) -> None:
    team_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(team_dir / TEAM_STATUS, lambda f: json.dump({"note": note}, f))
    log.error("%s: %s", team_dir.name, note)


def run_challenge(settings: ChallengeSettings, docker_client=None) -> Path:
    """Run every team and rank them; returns the path of index.html."""
    results = settings.out / "results"
    results.mkdir(parents=True, exist_ok=True)
    template = settings.monitor or RunSettings(inputs=settings.cases, results=results, team="")
    template = replace(template, inputs=settings.cases, results=results)
    archives = find_archives(settings.teams) if settings.teams else []
    if archives and docker_client is None:
        import docker

        docker_client = docker.from_env(timeout=600)
    for archive in archives:
        team = archive.name.split(".")[0].lower()
        print(f"== team {team}: loading {archive.name}", flush=True)
        try:
            team, image = load_archive(docker_client, archive)
            run_team(replace(template, team=team, image=image, command=None), docker_client)
        except MonitorError as err:
            _mark_failed(results / team, f"image failed to load: {err}")
        except Exception as err:  # noqa: BLE001 - one broken team never stops the others
            _mark_failed(results / team, f"run failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    for team, command in settings.local.items():
        print(f"== team {team}: local command", flush=True)
        try:
            run_team(replace(template, team=team, image=None, command=command))
        except Exception as err:  # noqa: BLE001
            _mark_failed(results / team, f"run failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    print("== scoring and ranking", flush=True)
    return rank_results(results, settings.gt, settings.out / "leaderboard", settings.leaderboard)
