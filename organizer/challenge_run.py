"""One challenge run, top to bottom: load each team's archive, run it over every case with the
resource monitor, score the outputs, rank the teams and write the report.

A team whose archive is refused (not one image tagged ``<team>:latest``) or fails to load, or whose run
cannot start, gets ``team_status.json`` with the reason: it is ranked last with that status, and the run
goes on with the other teams. An archive whose file name gives no valid team name is reported on the
console and listed as not ranked (no folder can be named after it). A host fault (HostFault) or an
interrupt is never a team's result: it stops the whole challenge, and ``--resume`` finishes it.

Runs and resumes: ``OUT_DIR/run.json`` (a :class:`challenge.results.RunRecord`) holds the challenge's run
id, which every team's run shares, and one attempt per invocation. ``--resume`` keeps every finished case
and every team whose archive was refused, and does not load an archive whose image the engine holds
already (the same image ID under the team's tag). Without ``--resume``, an output folder that holds a run
is refused, unless ``--fresh`` empties it first: the results of two runs are never mixed. The leaderboard
is derived: it is removed at the start of every invocation and written again at its end.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from challenge.cluster import ClusterSpec, dask_client
from challenge.profile import check_same, default
from challenge.results import (
    RunRecord,
    TeamDir,
    new_run_id,
    read_run,
    read_team_status,
    run_attempt,
    run_status,
    team_dir,
    write_team_status,
)
from challenge.teams import ARCHIVE_SUFFIXES, TeamNameError, team_from_archive
from evaluator.leaderboard import LeaderboardSettings, Published, rank_results
from organizer.cluster_run import (
    DEFAULT_TOLERANCE,
    calibrate_workers,
    finish_team,
    gpu_workers,
    run_teams,
    start_team,
    team_jobs,
)
from resource_monitor.archive import already_loaded, read_manifest
from resource_monitor.monitor import HostFault, MonitorError, load_archive, run_team
from resource_monitor.runners import monitor_identity
from resource_monitor.settings import RunSettings

log = logging.getLogger(__name__)


@dataclass
class ChallengeSettings:
    images: Path  # <Case>_0000.nii.gz images
    labels: Path  # <Case>.nii.gz ground truth
    out: Path  # run.json, results/ and leaderboard/ go here
    teams: Path | None = None  # folder of TEAM.tar.gz archives
    local: dict[str, str] = field(default_factory=dict)  # team -> host command (local mode)
    monitor: RunSettings | None = None  # template: timeout, limits, gpu, cases glob...
    leaderboard: LeaderboardSettings = field(default_factory=LeaderboardSettings)
    resume: bool = False  # finish the run in ``out``
    fresh: bool = False  # empty ``out``'s earlier run first
    cluster: ClusterSpec = field(default_factory=ClusterSpec)  # where the teams run (default: this host)
    strict_hosts: bool = False  # on a cluster: no team on a worker whose calibration is off
    tolerance: float = DEFAULT_TOLERANCE  # on a cluster: the calibration's allowed deviation from the median
    calibration_image: str = "flare-base:bookworm"  # on a cluster with archives: the calibration's image

    @property
    def results(self) -> Path:
        return self.out / "results"

    @property
    def leaderboard_dir(self) -> Path:
        return self.out / "leaderboard"

    @property
    def record_dir(self) -> TeamDir:
        """``out`` as a folder holding a run record (run.json)."""
        return TeamDir(self.out)


def find_archives(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


def prepare(settings: ChallengeSettings) -> RunRecord:
    """The challenge's run record: the one in ``out`` when resuming, else a new one. An output folder that
    holds a run, without ``resume`` or ``fresh``, is refused with ValueError (one line, before anything runs)."""
    previous = read_run(settings.record_dir)
    profile = settings.leaderboard.profile or default()
    if settings.resume and previous is not None:
        check_same(profile, {"profile": previous.profile}, f"--out {settings.out}'s run")
        return previous
    earlier = previous is not None or settings.results.exists()
    if earlier and not settings.fresh and not settings.resume:
        raise ValueError(f"--out {settings.out} holds an earlier run: --resume to finish it, or --fresh to start over")
    snapshot = {"images": settings.images.name, "labels": settings.labels.name,
                "teams": settings.teams.name if settings.teams else None, "local": sorted(settings.local)}
    return RunRecord(run_id=new_run_id(), team="", cases=[], settings=snapshot, profile=profile.identity())


def _mark_failed(team: TeamDir, note: str) -> None:
    write_team_status(team, note)
    log.error("%s: %s", team.team, note)


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _run_archive(archive: Path, template: RunSettings, docker_client, heading: str) -> str | None:
    """Run one team's archive; the reason when the archive cannot even name a team (it is then not run)."""
    try:
        team = team_dir(template.results, team_from_archive(archive))
    except TeamNameError as err:
        log.error("%s: not run: %s", archive.name, err)
        return str(err)
    if template.resume and read_team_status(team):
        print(f"== {heading} {team.team}: already ranked as failed ({read_team_status(team)})", flush=True)
        return None
    print(f"== {heading} {team.team}: {archive.name} ({_size(archive)})", flush=True)
    try:
        clock = time.monotonic()
        manifest = read_manifest(archive)
        loaded = already_loaded(docker_client, manifest)
        name, image = load_archive(docker_client, archive, manifest)
        how = "already loaded (the same image ID): not loaded again" if loaded else "checked and loaded"
        print(f"== {heading} {team.team}: {image} {how} in {time.monotonic() - clock:.0f} s", flush=True)
        run_team(replace(template, team=name, image=image, command=None), docker_client)
    except MonitorError as err:
        _mark_failed(team, f"image failed to load: {err}")
    except HostFault:
        raise
    except Exception as err:  # noqa: BLE001 - one broken team never stops the others
        _mark_failed(team, f"run failed: {_one_line(err)}")
    return None


def _run_local(name: str, command: str, template: RunSettings, heading: str) -> None:
    print(f"== {heading} {name}: local command", flush=True)
    try:
        run_team(replace(template, team=name, image=None, command=command))
    except HostFault:
        raise
    except Exception as err:  # noqa: BLE001
        _mark_failed(team_dir(template.results, name), f"run failed: {_one_line(err)}")


def run_challenge(settings: ChallengeSettings, docker_client=None, record: RunRecord | None = None) -> Published:
    """Run every team and rank them; returns what the leaderboard published. ``record``: what
    :func:`prepare` returned (called here when None: ValueError for an output folder holding an earlier run
    without ``resume`` or ``fresh``)."""
    record = record or prepare(settings)
    with dask_client(settings.cluster) as client:  # a scheduler that does not answer: before anything is written
        if settings.fresh and not settings.resume:
            shutil.rmtree(settings.results, ignore_errors=True)
        shutil.rmtree(settings.leaderboard_dir, ignore_errors=True)  # derived: never left stale
        settings.results.mkdir(parents=True, exist_ok=True)
        with run_attempt(record, lambda: record.save(settings.record_dir), monitor=monitor_identity()):
            return _run_all(settings, record, docker_client, client)


def _run_all(settings: ChallengeSettings, record: RunRecord, docker_client, client=None) -> Published:
    template = settings.monitor or RunSettings(inputs=settings.images, results=settings.results, team="")
    template = replace(template, inputs=settings.images, results=settings.results, resume=settings.resume,
                       fresh=False, run_id=record.run_id)
    archives = find_archives(settings.teams) if settings.teams else []
    if client is not None:
        not_ranked = _run_on_cluster(settings, record, client, template, archives)
    else:
        not_ranked = _run_here(settings, template, archives, docker_client)
    print("== scoring and ranking", flush=True)
    # On a LocalCluster the workers see the organizer's folders: they score too. A remote cluster's workers
    # do not, and the ground truth never leaves the organizer: scoring stays here.
    scorer = client if settings.cluster.local else None
    published = rank_results(settings.results, settings.labels, settings.leaderboard_dir, settings.leaderboard,
                             not_ranked, client=scorer, calibration=record.calibration)
    print(summary_table(published), flush=True)
    return published


def _run_here(settings: ChallengeSettings, template: RunSettings, archives: list[Path], docker_client
              ) -> dict[str, str]:
    """Every team on this host, one after the other; returns the archives that name no team."""
    if archives and docker_client is None:
        import docker

        docker_client = docker.from_env(timeout=600)
    total = len(archives) + len(settings.local)
    not_ranked = {}
    for n, archive in enumerate(archives, 1):
        if (reason := _run_archive(archive, template, docker_client, f"team {n}/{total}")) is not None:
            not_ranked[archive.name] = reason
    for n, (name, command) in enumerate(settings.local.items(), len(archives) + 1):
        _run_local(name, command, template, f"team {n}/{total}")
    return not_ranked


def _run_on_cluster(settings: ChallengeSettings, record: RunRecord, client, template: RunSettings,
                    archives: list[Path]) -> dict[str, str]:
    """Every team on the cluster's GPU workers (organizer.cluster_run), after calibrating them."""
    allowed = set(gpu_workers(client))
    if not allowed:
        raise HostFault("no worker of the cluster declares a GPU resource (dask worker ... --resources GPU=1)")
    record.calibration = calibrate_workers(client, settings.calibration_image if archives else None,
                                           settings.tolerance)
    record.save(settings.record_dir)
    flagged = {row["address"]: name for name, row in record.calibration["workers"].items() if row["flagged"]}
    for name in flagged.values():
        print(f"== calibration: worker {name} is more than {settings.tolerance:.0%} off the median"
              + ("; --strict-hosts: it gets no team" if settings.strict_hosts else ""), flush=True)
    if settings.strict_hosts:
        allowed -= set(flagged)
        if not allowed:
            raise HostFault("every worker is off the median calibration (--strict-hosts)")
    jobs, not_ranked = team_jobs(archives, settings.local, template, client, allowed)
    if settings.resume:
        jobs = [job for job in jobs if not read_team_status(job.settings.team_dir)]
    records = {job.name: start_team(job, record.run_id) for job in jobs}

    def finish(status: str) -> None:
        for job in jobs:
            finish_team(job, records[job.name], status)

    with run_status(finish):
        run_teams(client, jobs, settings.images, record.run_id, allowed)
    return not_ranked


def summary_table(published: Published) -> str:
    """The leaderboard as a console table: rank, team, score, DSC, NSD, Time (s), failed cases, status."""
    board = published.ranking.leaderboard.reset_index()
    table = board[["rank", "team", "score", "DSC", "NSD", "Time", "failed_cases", "status"]].rename(
        columns={"Time": "Time (s)", "failed_cases": "failed"})
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
