"""Run a team over every case, one sandboxed run per case, and write its results folder.

Flow per case (in sorted case order): stage a throwaway input folder holding only ``<Case>_0000.nii.gz``
and a fresh output folder -> start the sampler -> run (container or local command; disk caps watched) ->
stop the sampler -> collect the output safely -> the log, the PNG, then ``cases/<Case>.json`` (written
last: a case is finished once its record is) -> both efficiency CSVs rebuilt from the records.
``run.json`` (:class:`challenge.results.RunRecord`) holds the run id, the image, the settings, the host's
fingerprint and one attempt per invocation. The folder's layout is :mod:`challenge.results`'s.

Faults: a host fault (no space or an I/O error in the results, the Docker engine gone, the image removed
under the run) raises HostFault and leaves the case in progress unfinished; Ctrl-C or SIGTERM
(KeyboardInterrupt) removes this run's container or process group and temporary folder first. Either way
the attempt is recorded and ``--resume`` finishes the run. A watchdog process enforces the deadline of a
case whose monitor was killed outright, and the next run removes what a dead run left behind.
"""

from __future__ import annotations

import contextlib
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
from challenge.profile import ProfileError, check_same
from challenge.results import (
    RunRecord,
    TeamDir,
    finished_cases,
    holds_a_run,
    new_run_id,
    read_run,
    run_attempt,
    write_json,
)
from resource_monitor.archive import load_archive
from resource_monitor.collect import Collected, collect_output
from resource_monitor.efficiency import accurate_figures, flare22_figures, host_load, official_cpu_percent, other_cores
from resource_monitor.errors import HostFault, MonitorError, engine_gone, one_line
from resource_monitor.gpu import Gpu
from resource_monitor.host import fingerprint
from resource_monitor.plot import plot_case
from resource_monitor.records import write_efficiency_tables
from resource_monitor.runners import (
    LABEL_HOST,
    LABEL_PID,
    LABEL_RUN,
    CaseContext,
    CaseRunner,
    DockerRunner,
    LocalRunner,
    Outcome,
    monitor_alive,
    monitor_identity,
)
from resource_monitor.sampling import Sampler
from resource_monitor.settings import RunSettings
from resource_monitor.watchdog import Watchdog

__all__ = ["HostFault", "MonitorError", "TeamRun", "load_archive", "remove_leftovers", "run_case", "run_team",
           "select_cases"]

log = logging.getLogger(__name__)
TEMP_PREFIX = "flare-case-"  # per-case temporary folders: <TEMP_PREFIX><case>-<random>/
OWNER_FILE = ".monitor"  # in each of them: the identity of the monitor that made it


def select_cases(inputs: Path, pattern: str) -> dict[str, Path]:
    """Case id -> image path for ``<Case>_0000.nii.gz`` files whose case id or file name matches ``pattern``."""
    cases = {c: p for c, p in list_images(inputs).items()
             if fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(p.name, pattern)}
    if not cases:
        raise MonitorError(f"{inputs}: no <Case>_0000.nii.gz images match {pattern!r}")
    return cases


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


def remove_dead_folders(root: Path | None = None) -> list[str]:
    """Remove the per-case temporary folders of monitors that no longer run; never a live run's."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        try:
            owner = (folder / OWNER_FILE).read_text().strip()
        except OSError:
            continue
        if not monitor_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        log.warning("removed %d temporary folder(s) of crashed runs", len(removed))
    return removed


def case_status(outcome: Outcome, collected: Collected, memory: str) -> str:
    if outcome.error:
        return f"error: {outcome.error}"
    if outcome.timed_out:
        return "timeout"
    if outcome.oom:
        return f"error: out of memory (killed at the {memory} limit)"
    if outcome.exit_code != 0:
        return f"error: exit code {outcome.exit_code}"
    if collected.refused:
        return f"error: refused output: {collected.refused}"
    return "ok" if collected.path else "no-output"


def _stage(work: Path, image: Path, writable: bool) -> tuple[Path, Path]:
    in_dir, out_dir = work / "inputs", work / "outputs"
    in_dir.mkdir()
    out_dir.mkdir()
    shutil.copyfile(image, in_dir / image.name)
    os.chmod(in_dir / image.name, 0o644)
    os.chmod(in_dir, 0o777 if writable else 0o755)
    os.chmod(out_dir, 0o777)  # writable by whatever user the image runs as
    return in_dir, out_dir


@contextlib.contextmanager
def _case_folder(case: str, watchdog: Watchdog | None):
    """A temporary folder for one case, marked with this monitor's identity (removed on any exit but
    SIGKILL; then the watchdog or the next run removes it)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{case[:40]}-"))
    try:
        atomic_write_text(folder / OWNER_FILE, monitor_identity())
        if watchdog:
            watchdog.folder(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Failure:
    """A case that did not end ``ok``: its status and the last lines of its log."""

    case: str
    status: str
    log_tail: list[str]


@dataclass
class TeamRun:
    """What one invocation of :func:`run_team` did: the team folder, and the cases it ran by status kind."""

    team: TeamDir
    run_id: str
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[Failure] = field(default_factory=list)  # every case of this invocation that was not ok
    other_cores: list[float] = field(default_factory=list)  # per case run: cores used by other processes
    load1: list[float] = field(default_factory=list)  # per case run: the 1-minute load average at its end


def run_case(case: str, image: Path, runner: CaseRunner, settings: RunSettings, gpu: Gpu | None,
             run_id: str = "", watchdog: Watchdog | None = None) -> dict:
    """Run one case and return its record (also written to ``cases/<Case>.json``, last).

    OSError from writing the results (e.g. a full disk) and HostFault propagate: the case stays unfinished.
    """
    team, rules = settings.team_dir, settings.profile
    with _case_folder(case, watchdog) as work:
        in_dir, out_dir = _stage(work, image, settings.writable_inputs)
        sampler = Sampler(settings.interval_s, gpu)
        started_utc = datetime.now(timezone.utc).isoformat()
        sampler.start()
        try:
            outcome = runner.run(case, in_dir, out_dir, CaseContext(sampler, settings.timeout_s, settings.limits,
                                                                    watchdog, settings.log_max_bytes))
        finally:
            teardown_end = time.monotonic() - sampler.t0
            series = sampler.stop()
        # Time ends at the target's exit; the official run also timed `--rm` (teardown_end).
        time_s = outcome.timeline.exited if outcome.error is None else teardown_end
        collected = Collected(None)
        if outcome.error is None and not outcome.timed_out:
            collected = collect_output(case, out_dir, team.outputs, settings.limits.output_bytes,
                                       settings.listed_outputs)
    status = case_status(outcome, collected, settings.memory)
    atomic_write_text(team.case_log(case), outcome.log)
    if settings.plots:
        _plot(series, f"{settings.team} / {case}: {status}", team.plot(case))
    record = {
        "case": case, "run_id": run_id, "status": status, "finished": True,
        "started_utc": started_utc, "time_s": time_s, "time_s_with_teardown": teardown_end,
        "created_s": outcome.timeline.created, "startup_s": outcome.timeline.started,
        "exited_s": outcome.timeline.exited,
        "exit_code": outcome.exit_code, "oom": outcome.oom, "timed_out": outcome.timed_out,
        "log_tail": log_tail(outcome.log, settings.log_tail_lines, settings.log_tail_bytes),
        "log_file": team.case_log(case).name,
        "unexpected_outputs": collected.unexpected, "unexpected_outputs_count": collected.unexpected_count,
        "params": outcome.params, **outcome.extra,
        "flare22": flare22_figures(series, time_s, outcome.timed_out, rules.efficiency, rules.efficiency_penalties()),
        "accurate": accurate_figures(series, outcome.timeline, outcome.cpu_total_s,
                                     rules.efficiency.gpu_tolerance_mib),
        "series": series.to_json(),
        "cpu_percent": official_cpu_percent(series, rules.efficiency.cpu_denominator_bias).round(3).tolist()
        if len(series) else [],
        "host_load": {"other_cores": other_cores(series, _target_core_s(outcome, series)),
                      "load1": os.getloadavg()[0]},
    }
    write_json(team.case_record(case), record)
    return record


def _target_core_s(outcome: Outcome, series) -> float | None:
    """The target's CPU core-seconds: exact where the runner knows them, else the last probe reading."""
    if outcome.cpu_total_s is not None:
        return outcome.cpu_total_s
    readings = [v for v in series.target_cpu_s if v is not None]
    return max(readings) if readings else None


def _plot(series, title: str, path: Path) -> None:
    """The case's PNG; a plotting error loses the plot, not the case (a full disk still propagates)."""
    try:
        plot_case(series, title, path)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001
        log.warning("%s: no plot (%s)", path.name, one_line(err))


def log_tail(text: str, lines: int, max_bytes: int) -> list[str]:
    """The last ``lines`` lines of a log, within ``max_bytes`` UTF-8 bytes in all (a flood of long lines
    cannot bloat the case record)."""
    tail = text.encode("utf-8", errors="replace")[-max_bytes:].decode("utf-8", errors="replace")
    return tail.splitlines()[-lines:]


def _runner(settings: RunSettings, run_id: str, docker_client) -> tuple[CaseRunner, dict | None, object]:
    """The case runner of ``settings``, the image's description (None in local mode) and the Docker client.
    MonitorError when the image is missing (before any case); HostFault when the engine does not answer."""
    if settings.command:
        return LocalRunner(settings.command, cpus=settings.cpus), None, None
    import docker

    if settings.image is None:
        raise MonitorError("no image and no command to run")
    try:
        client = docker_client or docker.from_env()
        remove_leftovers(client)
        image = client.images.get(settings.image)
    except docker.errors.ImageNotFound:
        raise MonitorError(f"--image {settings.image}: no such image (load or build it first)") from None
    except Exception as err:
        if isinstance(err, docker.errors.DockerException) or engine_gone(err):
            raise HostFault(f"the Docker engine does not answer ({one_line(err)})") from None
        raise
    info = {"tag": settings.image, "id": image.id, "digests": image.attrs.get("RepoDigests", []),
            "created": image.attrs.get("Created")}
    return DockerRunner(client, settings.image, run_id, settings), info, client


def _run_record(settings: RunSettings, cases: list[str]) -> RunRecord:
    """The team's run record: the existing one when resuming (its run id survives), else a new one. A team
    folder that holds an earlier run is refused (MonitorError) unless resumed or ``fresh`` (then emptied):
    the results of two runs are never mixed."""
    team = settings.team_dir
    previous = read_run(team) if settings.resume else None
    snapshot = settings.snapshot()
    if previous is not None:
        try:
            check_same(settings.profile, {"profile": previous.profile}, f"{team.path}'s run")
        except ProfileError as err:
            raise MonitorError(str(err)) from None
        previous.settings, previous.cases, previous.profile = snapshot, cases, settings.profile.identity()
        return previous
    if holds_a_run(team):
        if not settings.fresh:
            raise MonitorError(f"{team.path} holds an earlier run: --resume to finish it, or --fresh to start over")
        shutil.rmtree(team.path)
    return RunRecord(run_id=settings.run_id or new_run_id(), team=settings.team, cases=cases, settings=snapshot,
                     command=settings.command, profile=settings.profile.identity())


def _results_fault(err: OSError, team: TeamDir) -> HostFault:
    """The HostFault of an OSError under a run: the Docker engine's (requests' errors are OSErrors too) or
    the results disk's."""
    if engine_gone(err):
        return HostFault(f"the Docker engine went away ({one_line(err)})")
    where = err.filename or team.path
    return HostFault(f"cannot write the results ({where}: {err.strerror or one_line(err)})")


def run_team(settings: RunSettings, docker_client=None) -> TeamRun:
    """Run ``settings.image`` (or ``settings.command``) on every selected case; returns what it did.

    Raises MonitorError before any case runs when there are no cases or the image is missing; HostFault
    when the host fails (the case in progress stays unfinished); KeyboardInterrupt after cleaning up. With
    ``settings.resume``, finished cases are skipped and the run id of ``run.json`` is kept; every call
    appends an attempt to ``run.json``, with its status (complete, interrupted, host-fault).
    """
    cases = select_cases(settings.inputs, settings.cases_glob)
    team = settings.team_dir
    record = _run_record(settings, list(cases))
    gpu = Gpu.open(settings.gpu)
    runner, record.image, client = _runner(settings, record.run_id, docker_client)
    remove_dead_folders()
    record.host = fingerprint(gpu, client)
    result = TeamRun(team, record.run_id)
    team.path.mkdir(parents=True, exist_ok=True)
    with run_attempt(record, lambda: record.save(team), monitor=monitor_identity()) as attempt:
        watchdog = Watchdog.start()
        try:
            try:
                write_efficiency_tables(team, record.run_id)  # a resumed run starts from its finished records
                _run_cases(cases, runner, settings, gpu, record.run_id, watchdog, result)
            except OSError as err:  # the results disk's, or the engine's (requests' errors are OSErrors)
                raise _results_fault(err, team) from None
        except HostFault:
            watchdog.close(clean=False)  # what is still running is the watchdog's to stop
            raise
        finally:
            watchdog.close()
            attempt.counts, attempt.host_load = dict(result.counts), host_load(result.other_cores, result.load1)
    return result


def _run_cases(cases: dict[str, Path], runner: CaseRunner, settings: RunSettings, gpu: Gpu | None, run_id: str,
               watchdog: Watchdog, result: TeamRun) -> None:
    done = finished_cases(result.team, run_id) if settings.resume else set()
    todo = [case for case in cases if case not in done]
    walls: list[float] = []
    for n, (case, image_path) in enumerate(cases.items(), 1):
        if case in done:
            print(f"[{n}/{len(cases)}] {settings.team} {case}: already finished (--resume)", flush=True)
            continue
        clock = time.monotonic()
        case_record = run_case(case, image_path, runner, settings, gpu, run_id, watchdog)
        write_efficiency_tables(result.team, run_id)
        walls.append(time.monotonic() - clock)
        _count(result, case_record)
        left = len(todo) - len(walls)
        eta = f", {_duration(left * sum(walls) / len(walls))} left for {left} case(s)" if left else ""
        print(f"[{n}/{len(cases)}] {settings.team} {case}: {_console_line(case_record)}{eta}", flush=True)


def _count(result: TeamRun, case_record: dict) -> None:
    load = case_record["host_load"]
    if load["other_cores"] is not None:
        result.other_cores.append(load["other_cores"])
    result.load1.append(load["load1"])
    status = case_record["status"]
    kind = status.split(":")[0]
    result.counts[kind] = result.counts.get(kind, 0) + 1
    if status != "ok":
        result.failed.append(Failure(case_record["case"], status, case_record["log_tail"]))


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s`` or ``2 h 10 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _console_line(record: dict) -> str:
    f = record["flare22"]
    gpu = "-" if f["GPU_Mem"] is None else f"{f['GPU_Mem']:.0f} MiB"
    return f"{record['status']}, Time {f['Time']:.2f} s, AUC_CPU {f['AUC_CPU_Time']:.1f} %*s, GPU_Mem {gpu}"
