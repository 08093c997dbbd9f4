"""The team runs of a challenge on a Dask cluster (``organizer challenge --scheduler ADDRESS`` or
``--cluster local:N``), with the results a one-host run would have written.

- **Workers** are the cluster's workers that declare a ``GPU`` resource (``dask worker ... --resources
  GPU=1 --nthreads 1``); every case task asks for ``GPU=1``, so no worker runs two containers at once.
- **Calibration** first: the same fixed CPU load runs on every worker, one worker at a time; a worker whose
  time differs from the median by more than ``tolerance`` is flagged, and with ``strict`` it gets no team.
- **Placement**: all of a team's cases run on one worker (their timings stay comparable); teams are spread
  over the workers, the least loaded first.
- **Data**: a case's image goes to its worker inside its job; an archive is sent in pieces unless the
  worker's engine holds its image already (the same image ID); each case's output, record, log and plot come
  back and are written into the organizer's results folder as they arrive (``challenge.files``). The
  ground truth never leaves the organizer.
- **Faults**: when a worker is lost mid-team, the team's unfinished cases move to another worker; a
  finished case (its files written here) never runs again, so each case has exactly one record, and the
  move is recorded in the team's ``run.json``.
- **Provenance**: each team's ``run.json`` names the worker and host of its attempt, the challenge's
  ``run.json`` every worker's calibration.
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from challenge.cases import image_name
from challenge.files import atomic_write_bytes
from challenge.results import (
    Attempt,
    RunRecord,
    TeamDir,
    finish_attempt,
    finished_cases,
    read_run,
    team_dir,
    write_team_status,
)
from challenge.teams import TeamNameError, team_from_archive
from resource_monitor.archive import read_manifest
from resource_monitor.errors import HostFault, MonitorError
from resource_monitor.monitor import select_cases
from resource_monitor.records import write_efficiency_tables
from resource_monitor.remote import (
    CHUNK_BYTES,
    CaseBundle,
    CaseJob,
    calibrate,
    image_present,
    load_received,
    receive_chunk,
    run_case_job,
)
from resource_monitor.settings import RunSettings

log = logging.getLogger(__name__)
POLL_S = 1.0  # how often lost workers are looked for
DEFAULT_TOLERANCE = 0.10
CALIBRATION_ROUNDS = 5  # a worker's fastest round counts: other load only ever slows a run down


@dataclass
class TeamJob:
    """One team on the cluster: its settings (image or command), its worker, and its cases' futures."""

    name: str
    settings: RunSettings
    worker: str = ""
    pending: dict[str, object] = field(default_factory=dict)  # case -> future
    finished: set[str] = field(default_factory=set)
    lost: bool = False  # a task of this team was lost with its worker: the team moves
    attempt: Attempt | None = None
    fingerprint: dict = field(default_factory=dict)


def _scheduler_workers(dask_scheduler) -> dict[str, tuple[str, dict]]:
    return {address: (str(ws.name), dict(ws.resources)) for address, ws in dask_scheduler.workers.items()}


def gpu_workers(client) -> dict[str, str]:
    """Address -> name of every worker that declares a GPU resource, asked of the scheduler itself (the
    client's cached view may briefly hold no per-worker information)."""
    workers = client.run_on_scheduler(_scheduler_workers)
    return {address: name for address, (name, resources) in workers.items() if resources.get("GPU", 0) >= 1}


# --- calibration -------------------------------------------------------------------------------------------

def calibrate_workers(client, image: str | None, tolerance: float = DEFAULT_TOLERANCE,
                      rounds: int = CALIBRATION_ROUNDS) -> dict:
    """Run the calibration load on every GPU worker, one worker at a time, in ``rounds`` interleaved rounds
    (a host's load that comes and goes then falls on every worker alike); a worker's figure is its fastest
    round. Returns {"median_s", "tolerance", "workers": {name: {address, host, seconds, runs_s, cpus, mode,
    deviation, flagged}}}."""
    workers = sorted(gpu_workers(client).items(), key=lambda item: item[1])
    rows: dict[str, dict] = {}
    for _ in range(rounds):
        for address, name in workers:
            future = client.submit(calibrate, image, workers=[address], allow_other_workers=False,
                                   resources={"GPU": 1}, pure=False)
            result = asdict(future.result())
            row = rows.setdefault(name, {"address": address, **result, "runs_s": []})
            row["runs_s"].append(result["seconds"])
    for name, row in rows.items():
        row["seconds"] = min(row["runs_s"])
        print(f"== calibration {name} ({row['host']}): {row['seconds']:.2f} s", flush=True)
    median = statistics.median(row["seconds"] for row in rows.values()) if rows else 0.0
    for row in rows.values():
        row["deviation"] = (row["seconds"] - median) / median if median else 0.0
        row["flagged"] = abs(row["deviation"]) > tolerance
    return {"median_s": median, "tolerance": tolerance, "workers": rows}


# --- images on the workers ----------------------------------------------------------------------------------

def ensure_image(client, archive: Path, address: str) -> str:
    """The team's tag on worker ``address``, its archive sent in pieces and loaded there unless the worker's
    engine holds its image already. MonitorError for an archive the worker refuses."""
    manifest = read_manifest(archive)
    pin = {"workers": [address], "allow_other_workers": False, "pure": False}
    if client.submit(image_present, manifest, **pin).result():
        return manifest.tag
    token, pieces = uuid.uuid4().hex, 0
    clock = time.monotonic()
    with archive.open("rb") as handle:
        while data := handle.read(CHUNK_BYTES):
            client.submit(receive_chunk, token, pieces, data, **pin).result()
            pieces += 1
    _, tag = client.submit(load_received, token, archive.name, pieces, **pin).result()
    print(f"   {manifest.team}: sent {archive.stat().st_size / 1e6:.0f} MB to its worker and loaded in "
          f"{time.monotonic() - clock:.0f} s", flush=True)
    return str(tag)


# --- the runs -----------------------------------------------------------------------------------------------

def _least_loaded(load: dict[str, int], allowed: set[str]) -> str:
    if not allowed:
        raise HostFault("no GPU worker is left in the cluster")
    return min(sorted(allowed), key=lambda address: load.get(address, 0))


def _submit(client, team: TeamJob, images: Path, run_id: str) -> None:
    """Submit the team's unfinished cases to its worker, in case order."""
    for n, case in enumerate(sorted(select_cases(images, team.settings.cases_glob))):
        if case in team.finished or case in team.pending:
            continue
        job = CaseJob(team.settings, case, (images / image_name(case)).read_bytes(), run_id)
        team.pending[case] = client.submit(run_case_job, job, workers=[team.worker], allow_other_workers=False,
                                           resources={"GPU": 1}, pure=False, priority=-n,
                                           key=f"case-{team.name}-{case}-{uuid.uuid4().hex[:8]}")


def _write_bundle(team: TeamDir, bundle: CaseBundle) -> None:
    """A finished case's files into the team's folder: output, log and plot first, the record last."""
    record_name = f"cases/{bundle.case}.json"
    for name, data in sorted(bundle.files.items(), key=lambda item: item[0] == record_name):
        atomic_write_bytes(team.path / name, data)


def run_teams(client, teams: list[TeamJob], images: Path, run_id: str, allowed: set[str]) -> None:
    """Run every team's cases on the cluster (see the module docstring); returns when every case finished.
    HostFault when no worker is left; KeyboardInterrupt cancels what is pending."""
    load: dict[str, int] = {}
    for team in teams:
        if team.worker:
            load[team.worker] = load.get(team.worker, 0) + 1
    for team in teams:
        if not team.worker:
            team.worker = _least_loaded(load, allowed)
            load[team.worker] = load.get(team.worker, 0) + 1
        _submit(client, team, images, run_id)
    try:
        while any(team.pending or team.lost for team in teams):
            _collect(client, teams, POLL_S)
            live = set(gpu_workers(client)) & allowed
            for team in teams:
                if (team.pending or team.lost) and (team.lost or team.worker not in live):
                    target = _least_loaded(load, live - {team.worker} or live)
                    load[target] = load.get(target, 0) + 1
                    _move(client, team, target, images, run_id, "its worker was lost")
    except KeyboardInterrupt:
        client.cancel([f for team in teams for f in team.pending.values()])
        raise


def _collect(client, teams: list[TeamJob], timeout: float) -> None:
    from distributed import wait

    futures = {f: (team, case) for team in teams for case, f in team.pending.items() if f is not None}
    try:
        done = wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED").done if futures else set()
    except TimeoutError:  # nothing finished within the poll interval
        done = set()
    for future in done:
        team, case = futures[future]
        if future.status == "finished":
            bundle = future.result()
            _write_bundle(team.settings.team_dir, bundle)
            team.finished.add(case)
            team.fingerprint = team.fingerprint or bundle.fingerprint
            del team.pending[case]
            status, seconds = bundle.record["status"], bundle.record["flare22"]["Time"]
            print(f"[{team.name}] {case} on {bundle.worker}: {status}, Time {seconds:.2f} s", flush=True)
        elif future.status == "error":
            _failed(team, case, future)


def _failed(team: TeamJob, case: str, future) -> None:
    """A case task that raised. Lost with its worker (KilledWorker): the team moves, and the case runs again
    elsewhere. A host fault of the worker stops the challenge (HostFault, exit 3); so does any other failure
    of the harness on the worker. A MonitorError (the team's image cannot run there) is the team's."""
    from distributed import KilledWorker

    error = future.exception()
    del team.pending[case]
    if isinstance(error, KilledWorker):
        log.warning("%s/%s: lost with its worker; the team moves", team.name, case)
        team.lost = True
    elif isinstance(error, HostFault):
        raise HostFault(f"{team.name}/{case} on its worker: {error}")
    elif isinstance(error, MonitorError):
        write_team_status(team.settings.team_dir, f"run failed on its worker: {error}")
        team.pending.clear()
    else:
        raise HostFault(f"{team.name}/{case}: the harness failed on its worker ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200] if str(error) else ''})")


def _move(client, team: TeamJob, address: str, images: Path, run_id: str, reason: str) -> None:
    """Move a team's unfinished cases to the worker at ``address``; finished ones stay as they are."""
    client.cancel([f for f in team.pending.values() if f is not None])
    assert team.attempt is not None
    team.attempt.moves.append({"from": team.worker, "to": address, "finished": len(team.finished),
                               "reason": reason})
    print(f"== {team.name}: {reason}; its unfinished cases move to another worker", flush=True)
    team.pending.clear()
    team.lost = False
    team.worker = address
    _submit(client, team, images, run_id)


def team_jobs(archives: list[Path], local: dict[str, str], template: RunSettings, client,
              allowed: set[str]) -> tuple[list[TeamJob], dict[str, str]]:
    """The teams to run (archives checked and sent to their workers) and the archives that name no team."""
    jobs: list[TeamJob] = []
    not_ranked: dict[str, str] = {}
    load: dict[str, int] = {}
    for archive in archives:
        try:
            name = team_from_archive(archive)
        except TeamNameError as err:
            not_ranked[archive.name] = str(err)
            continue
        worker = _least_loaded(load, allowed)
        load[worker] = load.get(worker, 0) + 1
        try:
            tag = ensure_image(client, archive, worker)
        except MonitorError as err:
            write_team_status(team_dir(template.results, name), f"image failed to load: {err}")
            continue
        jobs.append(TeamJob(name, replace(template, team=name, image=tag, command=None), worker))
    for name, command in local.items():
        jobs.append(TeamJob(name, replace(template, team=name, image=None, command=command)))
    return jobs, not_ranked


def start_team(job: TeamJob, run_id: str) -> RunRecord:
    """The team's run record (the existing one when resuming) with a new attempt on its worker; the cases
    it finished already are marked so."""
    team = job.settings.team_dir
    team.path.mkdir(parents=True, exist_ok=True)
    previous = read_run(team) if job.settings.resume else None
    if previous is not None:
        job.finished = finished_cases(team, run_id)
    snapshot = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(job.settings).items()}
    record = previous or RunRecord(run_id=run_id, team=job.name, cases=[], settings=snapshot,
                                   command=job.settings.command)
    record.image = {"tag": job.settings.image} if job.settings.image else None
    job.attempt = record.start_attempt()
    return record


def finish_team(job: TeamJob, record: RunRecord, status: str) -> None:
    """The team's run record, attempt and efficiency tables, after its cases."""
    team = job.settings.team_dir
    assert job.attempt is not None
    job.attempt.worker = job.worker  # the last one; moves lists the others
    record.host = job.fingerprint or record.host
    job.attempt.host = str(record.host.get("hostname", job.attempt.host))
    finish_attempt(job.attempt, status, {"finished": len(job.finished)})
    record.save(team)
    write_efficiency_tables(team, record.run_id)
