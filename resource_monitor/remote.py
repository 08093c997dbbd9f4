"""What a cluster worker does for the organizer: the functions run as Dask tasks on a GPU worker, against
that worker's own Docker engine and GPU, with nothing shared but what Dask carries.

- :func:`run_case_job`: one case of one team, exactly as :func:`resource_monitor.monitor.run_team` runs it
  on one host (the same sandbox, sampler and records), in a temporary folder of the worker; the case's
  image travels in the job, and its files (output, record, log, plot) travel back in a :class:`CaseBundle`.
  The ground truth never leaves the organizer.
- :func:`receive_chunk` and :func:`load_received`: a team's archive sent in pieces and ``docker load``-ed on
  the worker (checked by its manifest first, as on one host), unless the engine holds its image already.
- :func:`calibrate`: a fixed CPU load run through the same runner, one worker at a time, so that workers
  whose speed differs can be flagged before their timings are ranked.

Units: seconds, bytes.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from challenge.cases import image_name
from challenge.files import atomic_path, atomic_write_bytes
from resource_monitor.archive import Manifest, already_loaded, load_archive, read_manifest
from resource_monitor.errors import HostFault, one_line
from resource_monitor.settings import RunSettings

CHUNK_BYTES = 64 << 20  # archive pieces sent through Dask
CALIBRATION_ENV = "FLARE_CALIBRATION_CPUS"  # a worker's CPU quota for its calibration container (tests)
BURN = "import time\nt=time.perf_counter()\nx=0\nfor i in range({n}): x+=i*i\nprint(time.perf_counter()-t)\n"
BURN_ITERATIONS = 8_000_000  # about 1.5 s of one core here


@dataclass
class CaseJob:
    """One case for a worker: the run's settings (their paths are replaced on the worker), the case, its
    image's bytes and the run id every record carries."""

    settings: RunSettings
    case: str
    image: bytes
    run_id: str


@dataclass
class CaseBundle:
    """What a worker sends back for one case: the team folder's files of the case (path relative to the team
    folder -> bytes), its record, and where it ran."""

    case: str
    files: dict[str, bytes]
    record: dict
    worker: str
    host: str
    fingerprint: dict = field(default_factory=dict)


def worker_name() -> str:
    """The Dask worker running this task (its name, else its address), or this host's name outside Dask."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.name if worker.name is not None else worker.address)
    except (ImportError, ValueError):
        return platform.node()


def run_case_job(job: CaseJob) -> CaseBundle:
    """Run ``job`` on this worker (see the module docstring); HostFault and MonitorError propagate."""
    from challenge.results import read_json, read_run
    from resource_monitor.monitor import run_team

    with tempfile.TemporaryDirectory(prefix="flare-job-") as tmp:
        images, results = Path(tmp) / "images", Path(tmp) / "results"
        atomic_write_bytes(images / image_name(job.case), job.image)
        settings = replace(job.settings, inputs=images, results=results, cases_glob=job.case, resume=False,
                           fresh=True, run_id=job.run_id)
        with contextlib.redirect_stdout(io.StringIO()):  # the organizer prints its own line per case
            run_team(settings)
        team = settings.team_dir
        files = {str(p.relative_to(team.path)): p.read_bytes() for p in team.path.rglob("*")
                 if p.is_file() and p.parent != team.path}
        record = read_json(team.case_record(job.case))
        run = read_run(team)
    return CaseBundle(job.case, files, record, worker_name(), platform.node(), run.host if run else {})


def _piece(token: str, index: int) -> Path:
    return Path(tempfile.gettempdir()) / f"flare-archive-{token}.{index:05d}"


def receive_chunk(token: str, index: int, data: bytes) -> int:
    """Store piece ``index`` (0, 1, ...) of an archive on this worker; returns its size in bytes."""
    atomic_write_bytes(_piece(token, index), data)
    return len(data)


def image_present(manifest: Manifest) -> bool:
    """Whether this worker's engine holds the archive's image under its team's tag already."""
    import docker

    return already_loaded(docker.from_env(timeout=600), manifest)


def load_received(token: str, filename: str, pieces: int) -> tuple[str, str]:
    """Join the ``pieces`` received under ``token`` into the archive ``filename`` (its name gives the team)
    and ``docker load`` it into this worker's engine, after the manifest check; every piece and the joined
    file are removed. Returns (team, tag)."""
    import docker

    folder = Path(tempfile.mkdtemp(prefix=f"flare-archive-{token}-"))
    archive = folder / filename
    try:
        with atomic_path(archive) as joined, open(joined, "wb") as out:
            for index in range(pieces):
                out.write(_piece(token, index).read_bytes())
        return load_archive(docker.from_env(timeout=600), archive, read_manifest(archive))
    finally:
        for index in range(pieces):
            _piece(token, index).unlink(missing_ok=True)
        archive.unlink(missing_ok=True)
        folder.rmdir()


@dataclass(frozen=True)
class Calibration:
    """One worker's calibration: the fixed load's wall time (s) through the monitor's runner."""

    worker: str
    host: str
    seconds: float
    cpus: float | None  # the quota the calibration ran under (None: none)
    mode: str  # "docker" or "local"


def calibrate(image: str | None, iterations: int = BURN_ITERATIONS) -> Calibration:
    """Run a fixed CPU load once on this worker, in a container of ``image`` (its python3; sandboxed as the
    cases are, with the worker's ``FLARE_CALIBRATION_CPUS`` quota if set) or, without an image, as a host
    process; returns the load's own wall time."""
    cpus = float(os.environ[CALIBRATION_ENV]) if os.environ.get(CALIBRATION_ENV) else None
    seconds = _burn_once(image, BURN.format(n=iterations), cpus)
    return Calibration(worker_name(), platform.node(), seconds, cpus, "docker" if image else "local")


def _burn_once(image: str | None, code: str, cpus: float | None) -> float:
    """The load's own wall time (s), as it prints it: the container's or process's start-up is left out, as
    it is host noise rather than the speed a case's computation sees. HostFault (one line naming the image
    and the host) when the load cannot run or prints no time: the calibration is the organizer's set-up,
    never a team's result."""
    import subprocess
    import sys

    import docker

    where = f"{image or 'a host process'} on {platform.node()}"
    name = f"flare-calibration-{uuid.uuid4().hex[:12]}"
    try:
        if image is None:
            printed = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout
        else:
            printed = docker.from_env(timeout=600).containers.run(
                image, ["python3", "-c", code], name=name, remove=True, network_mode="none", cap_drop=["ALL"],
                security_opt=["no-new-privileges"], nano_cpus=int(cpus * 1e9) if cpus else None)
        return float(printed.decode("ascii", "replace").split()[-1])
    except (docker.errors.DockerException, subprocess.CalledProcessError, ValueError, IndexError) as err:
        if image is not None:  # a container that failed to start is not removed by remove=True
            with contextlib.suppress(docker.errors.DockerException):
                docker.from_env(timeout=60).containers.get(name).remove(force=True)
        raise HostFault(f"the calibration load failed in {where} ({one_line(err)})") from None
