"""One challenge run, top to bottom: load each team's archive, run it over every case with the
resource monitor, score the outputs, rank the teams and write the report.

A team whose archive is refused (not one image tagged ``<team>:latest``) or fails to load, or whose run
cannot start, gets ``team_status.json`` with the reason: it is ranked last with that status, and the run
goes on with the other teams. An archive whose file name gives no valid team name is reported on the
console and skipped (no folder can be named after it). A host fault (HostFault) or an interrupt is never
a team's result: it stops the whole challenge, and ``--resume`` of the team runs finishes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from challenge.results import TeamDir, team_dir, write_team_status
from challenge.teams import ARCHIVE_SUFFIXES, TeamNameError, team_from_archive
from evaluator.leaderboard import LeaderboardSettings, Published, rank_results
from resource_monitor.monitor import HostFault, MonitorError, load_archive, run_team
from resource_monitor.settings import RunSettings

log = logging.getLogger(__name__)


@dataclass
class ChallengeSettings:
    images: Path  # <Case>_0000.nii.gz images
    labels: Path  # <Case>.nii.gz ground truth
    out: Path  # results/ and leaderboard/ go here
    teams: Path | None = None  # folder of TEAM.tar.gz archives
    local: dict[str, str] = field(default_factory=dict)  # team -> host command (local mode)
    monitor: RunSettings | None = None  # template: timeout, limits, gpu, cases glob...
    leaderboard: LeaderboardSettings = field(default_factory=LeaderboardSettings)

    @property
    def results(self) -> Path:
        return self.out / "results"

    @property
    def leaderboard_dir(self) -> Path:
        return self.out / "leaderboard"


def find_archives(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


def _mark_failed(team: TeamDir, note: str) -> None:
    write_team_status(team, note)
    log.error("%s: %s", team.team, note)


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def _run_archive(archive: Path, template: RunSettings, results: Path, docker_client) -> str | None:
    """Run one team's archive; the reason when the archive cannot even name a team (it is then not run)."""
    try:
        team = team_dir(results, team_from_archive(archive))
    except TeamNameError as err:
        log.error("%s: not run: %s", archive.name, err)
        return str(err)
    print(f"== team {team.team}: loading {archive.name}", flush=True)
    try:
        name, image = load_archive(docker_client, archive)
        run_team(replace(template, team=name, image=image, command=None), docker_client)
    except MonitorError as err:
        _mark_failed(team, f"image failed to load: {err}")
    except HostFault:
        raise
    except Exception as err:  # noqa: BLE001 - one broken team never stops the others
        _mark_failed(team, f"run failed: {_one_line(err)}")
    return None


def run_challenge(settings: ChallengeSettings, docker_client=None) -> Published:
    """Run every team and rank them; returns what the leaderboard published."""
    results = settings.results
    results.mkdir(parents=True, exist_ok=True)
    template = settings.monitor or RunSettings(inputs=settings.images, results=results, team="")
    template = replace(template, inputs=settings.images, results=results)
    archives = find_archives(settings.teams) if settings.teams else []
    if archives and docker_client is None:
        import docker

        docker_client = docker.from_env(timeout=600)
    not_ranked = {}
    for archive in archives:
        if (reason := _run_archive(archive, template, results, docker_client)) is not None:
            not_ranked[archive.name] = reason
    for name, command in settings.local.items():
        print(f"== team {name}: local command", flush=True)
        try:
            run_team(replace(template, team=name, image=None, command=command))
        except HostFault:
            raise
        except Exception as err:  # noqa: BLE001
            _mark_failed(team_dir(results, name), f"run failed: {_one_line(err)}")
    print("== scoring and ranking", flush=True)
    return rank_results(results, settings.labels, settings.leaderboard_dir, settings.leaderboard, not_ranked)
