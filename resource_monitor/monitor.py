"""Run a team over every case, one sandboxed run per case, and write its results folder.

Flow per case (in sorted case order): stage a throwaway input folder holding only ``<Case>_0000.nii.gz``
and a fresh output folder -> start the sampler -> run (container or local command) -> stop the sampler
-> collect the output safely -> figures -> ``cases/<Case>.json``, the PNG, and both efficiency CSVs
rebuilt from the records. ``run.json`` (:class:`challenge.results.RunRecord`) holds the run id, the image,
the settings, the host's fingerprint and one attempt per invocation. The folder's layout is
:mod:`challenge.results`'s.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from challenge.cases import list_images
from challenge.files import atomic_write_text
from challenge.results import RunRecord, TeamDir, finish_attempt, finished_cases, new_run_id, read_run, write_json
from challenge.teams import TeamNameError, team_from_archive
from resource_monitor.collect import collect_output
from resource_monitor.efficiency import accurate_figures, flare22_figures, official_cpu_percent
from resource_monitor.gpu import Gpu
from resource_monitor.host import fingerprint
from resource_monitor.plot import plot_case
from resource_monitor.records import write_efficiency_tables
from resource_monitor.runners import (
    LABEL_HOST,
    LABEL_PID,
    LABEL_RUN,
    CaseRunner,
    DockerRunner,
    LocalRunner,
    Outcome,
    monitor_alive,
    monitor_identity,
)
from resource_monitor.sampling import Sampler
from resource_monitor.settings import RunSettings

log = logging.getLogger(__name__)


class MonitorError(ValueError):
    """A run that cannot start (no cases, no image, a bad archive); the message is one line."""


def select_cases(inputs: Path, pattern: str) -> dict[str, Path]:
    """Case id -> image path for ``<Case>_0000.nii.gz`` files whose case id or file name matches ``pattern``."""
    cases = {c: p for c, p in list_images(inputs).items()
             if fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(p.name, pattern)}
    if not cases:
        raise MonitorError(f"{inputs}: no <Case>_0000.nii.gz images match {pattern!r}")
    return cases


def load_archive(client, archive: Path) -> tuple[str, str]:
    """``docker load`` a ``docker save`` archive (gzip or plain); returns (team, "team:latest").
    The team is the file name up to its first dot, in lower case, as FLARE22 derived it
    (:func:`challenge.teams.team_from_archive`)."""
    import docker

    try:
        team = team_from_archive(archive)
    except TeamNameError as err:
        raise MonitorError(str(err)) from None
    try:
        with archive.open("rb") as f:
            images = client.images.load(f)
    except (OSError, docker.errors.DockerException) as err:
        raise MonitorError(f"{archive}: not a loadable docker image archive ({str(err).splitlines()[0]})") from None
    tags = sorted(t for image in images for t in image.tags)
    if f"{team}:latest" not in tags:
        raise MonitorError(f"{archive}: holds {', '.join(tags) or 'no tagged image'}, not {team}:latest")
    return team, f"{team}:latest"


def remove_leftovers(client) -> list[str]:
    """Remove containers left by crashed monitor runs on this host; never those of a live run.

    A leftover carries the run label, this host's name, and the identity (PID and start time) of a monitor
    process that no longer runs. Containers labelled by another host (an engine shared across machines or
    PID namespaces) are left alone: their monitor's liveness cannot be checked from here.
    """
    import docker

    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN}):
        labels = container.labels
        if labels.get(LABEL_HOST) != os.uname().nodename or monitor_alive(labels.get(LABEL_PID, "")):
            continue
        try:
            container.remove(force=True)
        except docker.errors.NotFound:  # removed meanwhile by its own run
            continue
        removed.append(container.name)
    if removed:
        log.warning("removed %d leftover container(s) of crashed runs: %s", len(removed), ", ".join(removed))
    return removed


def case_status(outcome: Outcome, collected_path: Path | None, refused: str | None, memory: str) -> str:
    if outcome.error:
        return f"error: {outcome.error}"
    if outcome.timed_out:
        return "timeout"
    if outcome.oom:
        return f"error: out of memory (killed at the {memory} limit)"
    if outcome.exit_code != 0:
        return f"error: exit code {outcome.exit_code}"
    if refused:
        return f"error: refused output: {refused}"
    return "ok" if collected_path else "no-output"


def _stage(work: Path, image: Path, writable: bool) -> tuple[Path, Path]:
    in_dir, out_dir = work / "inputs", work / "outputs"
    in_dir.mkdir()
    out_dir.mkdir()
    shutil.copyfile(image, in_dir / image.name)
    os.chmod(in_dir / image.name, 0o644)
    os.chmod(in_dir, 0o777 if writable else 0o755)
    os.chmod(out_dir, 0o777)  # writable by whatever user the image runs as
    return in_dir, out_dir


@dataclass
class TeamRun:
    """What one invocation of :func:`run_team` did: the team folder, and the cases it ran by status kind."""

    team: TeamDir
    run_id: str
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # "<Case>: <status>" of every case not ok


def run_case(case: str, image: Path, runner: CaseRunner, settings: RunSettings, gpu: Gpu | None,
             run_id: str = "") -> dict:
    """Run one case and return its record (also written to ``cases/<Case>.json``)."""
    team = settings.team_dir
    with tempfile.TemporaryDirectory(prefix=f"flare-{case}-", ignore_cleanup_errors=True) as tmp:
        in_dir, out_dir = _stage(Path(tmp), image, settings.writable_inputs)
        sampler = Sampler(settings.interval_s, gpu)
        started_utc = datetime.now(timezone.utc).isoformat()
        sampler.start()
        outcome = runner.run(case, in_dir, out_dir, sampler, settings.timeout_s)
        teardown_end = time.monotonic() - sampler.t0
        series = sampler.stop()
        # Time ends at the target's exit; the official run also timed `--rm` (teardown_end).
        time_s = outcome.timeline.exited if outcome.error is None else teardown_end
        collected_path, refused, unexpected = None, None, []
        if outcome.error is None and not outcome.timed_out:
            got = collect_output(case, out_dir, team.outputs, settings.output_cap_bytes)
            collected_path, refused, unexpected = got.path, got.refused, got.unexpected
    status = case_status(outcome, collected_path, refused, settings.memory)
    atomic_write_text(team.case_log(case), outcome.log)
    record = {
        "case": case, "run_id": run_id, "status": status, "finished": True,
        "started_utc": started_utc, "time_s": time_s, "time_s_with_teardown": teardown_end,
        "created_s": outcome.timeline.created, "startup_s": outcome.timeline.started,
        "exited_s": outcome.timeline.exited,
        "exit_code": outcome.exit_code, "oom": outcome.oom, "timed_out": outcome.timed_out,
        "log_tail": outcome.log.splitlines()[-settings.log_tail_lines:], "log_file": team.case_log(case).name,
        "unexpected_outputs": unexpected, "params": outcome.params, **outcome.extra,
        "flare22": flare22_figures(series, time_s, outcome.timed_out),
        "accurate": accurate_figures(series, outcome.timeline, outcome.cpu_total_s),
        "series": series.to_json(),
        "cpu_percent": official_cpu_percent(series).round(3).tolist() if len(series) else [],
    }
    write_json(team.case_record(case), record)
    if settings.plots:
        plot_case(series, f"{settings.team} / {case}: {status}", team.plot(case))
    return record


def _runner(settings: RunSettings, run_id: str, docker_client) -> tuple[CaseRunner, dict | None, object]:
    """The case runner of ``settings``, the image's description (None in local mode) and the Docker client."""
    if settings.command:
        return LocalRunner(settings.command), None, None
    import docker

    if settings.image is None:
        raise MonitorError("no image and no command to run")
    client = docker_client or docker.from_env()
    remove_leftovers(client)
    try:
        image = client.images.get(settings.image)
    except docker.errors.ImageNotFound:
        raise MonitorError(f"--image {settings.image}: no such image (load or build it first)") from None
    info = {"tag": settings.image, "id": image.id, "digests": image.attrs.get("RepoDigests", []),
            "created": image.attrs.get("Created")}
    return DockerRunner(client, settings.image, run_id, settings), info, client


def _run_record(settings: RunSettings, cases: list[str]) -> RunRecord:
    """The team's run record: the existing one when resuming (its run id survives), else a new one."""
    previous = read_run(settings.team_dir) if settings.resume else None
    snapshot = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()}
    if previous is not None:
        previous.settings, previous.cases = snapshot, cases
        return previous
    return RunRecord(run_id=new_run_id(), team=settings.team, cases=cases, settings=snapshot,
                     command=settings.command)


def run_team(settings: RunSettings, docker_client=None) -> TeamRun:
    """Run ``settings.image`` (or ``settings.command``) on every selected case; returns what it did.

    Raises MonitorError before any case runs when there are no cases or the image is missing. With
    ``settings.resume``, finished cases are skipped and the run id of ``run.json`` is kept; every call
    appends an attempt to ``run.json``.
    """
    cases = select_cases(settings.inputs, settings.cases_glob)
    team = settings.team_dir
    team.path.mkdir(parents=True, exist_ok=True)
    record = _run_record(settings, list(cases))
    gpu = Gpu.open(settings.gpu)
    runner, record.image, client = _runner(settings, record.run_id, docker_client)
    record.host = fingerprint(gpu, client)
    attempt = record.start_attempt(monitor=monitor_identity())
    record.save(team)
    done = finished_cases(team) if settings.resume else set()
    result = TeamRun(team, record.run_id)
    for n, (case, image_path) in enumerate(cases.items(), 1):
        if case in done:
            print(f"[{n}/{len(cases)}] {settings.team} {case}: already finished (--resume)", flush=True)
            continue
        case_record = run_case(case, image_path, runner, settings, gpu, record.run_id)
        write_efficiency_tables(team)
        status = case_record["status"]
        kind = status.split(":")[0]
        result.counts[kind] = result.counts.get(kind, 0) + 1
        if status != "ok":
            result.failed.append(f"{case}: {status}")
        print(f"[{n}/{len(cases)}] {settings.team} {case}: {_console_line(case_record)}", flush=True)
    write_efficiency_tables(team)
    finish_attempt(attempt, "complete", result.counts)
    record.save(team)
    return result


def _console_line(record: dict) -> str:
    f = record["flare22"]
    gpu = "-" if f["GPU_Mem"] is None else f"{f['GPU_Mem']:.0f} MiB"
    return (f"{record['status']}, Time {f['Time']:.2f} s, AUC_CPU {f['AUC_CPU_Time']:.1f} %*s, GPU_Mem {gpu}")
