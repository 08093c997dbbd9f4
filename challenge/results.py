"""The results folder: its layout, its file names and its records, in one place.

The resource monitor writes it, the evaluator scores and ranks it, the organizer drives both; all of them
go through this module, and none of them names a file of it on its own::

    RESULTS_DIR/                     --results of the monitor; OUT_DIR/results of the organizer
      <team>/                        a valid team name (challenge.teams), never a path
        run.json                     RunRecord: run id, team, image or command, settings, host, attempts
        team_status.json             TeamStatus: why the team has no results (its archive failed, ...)
        efficiency.csv               FLARE22 efficiency figures, one row per finished case (monitor)
        efficiency_accurate.csv      the container's own figures, one row per finished case (monitor)
        metrics.csv, summary.json    DSC and NSD per case, and their summary (evaluator)
        outputs/<Case>.nii.gz        the collected predictions
        cases/<Case>.json            the case record: status, timings, figures, sampled series
        cases/<Case>.log             the run's full log (capped)
        plots/<Case>.png             GPU memory, CPU and RAM over time

Every file is written by :mod:`challenge.files` (temporary name, then rename). JSON is UTF-8 with numpy
numbers and paths turned into plain values.
"""

from __future__ import annotations

import json
import platform
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from challenge.exitcodes import HostFault
from challenge.files import atomic_write
from challenge.teams import check_team

if TYPE_CHECKING:
    import pandas as pd

RUN_JSON = "run.json"
TEAM_STATUS = "team_status.json"
EFFICIENCY_CSV = "efficiency.csv"
EFFICIENCY_ACCURATE_CSV = "efficiency_accurate.csv"
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
OUTPUTS = "outputs"
CASES = "cases"
PLOTS = "plots"
RUN_SCHEMA = 1


def utc_now() -> str:
    """The current time, UTC, ISO 8601."""
    return datetime.now(timezone.utc).isoformat()


def _plain(value: Any) -> Any:
    """JSON for numpy numbers and arrays, paths and dataclasses."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: Path, data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (parents created). NaN is written as NaN."""
    return atomic_write(path, lambda f: json.dump(data, f, indent=indent, default=_plain))


def read_json(path: Path) -> Any:
    """The JSON in ``path``; raises OSError or ValueError (json.JSONDecodeError) as json does."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class TeamDir:
    """One team's folder of a results root, and the path of every file in it."""

    path: Path

    @property
    def team(self) -> str:
        return self.path.name

    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def status_json(self) -> Path:
        return self.path / TEAM_STATUS

    @property
    def efficiency_csv(self) -> Path:
        return self.path / EFFICIENCY_CSV

    @property
    def efficiency_accurate_csv(self) -> Path:
        return self.path / EFFICIENCY_ACCURATE_CSV

    @property
    def metrics_csv(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def summary_json(self) -> Path:
        return self.path / SUMMARY_JSON

    @property
    def outputs(self) -> Path:
        return self.path / OUTPUTS

    @property
    def cases(self) -> Path:
        return self.path / CASES

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    def case_record(self, case: str) -> Path:
        return self.cases / f"{case}.json"

    def case_log(self, case: str) -> Path:
        return self.cases / f"{case}.log"

    def plot(self, case: str) -> Path:
        return self.plots / f"{case}.png"

    def looks_like_team(self) -> bool:
        """Whether the folder holds any of a team's results (efficiency, outputs or a team status)."""
        return self.path.is_dir() and any(p.exists() for p in (self.efficiency_csv, self.outputs, self.status_json))


def team_dir(results: Path, team: str) -> TeamDir:
    """The folder of ``team`` under ``results``; TeamNameError when ``team`` is not a valid team name,
    so that no name can lead outside ``results``."""
    return TeamDir(Path(results) / check_team(team))


def discover_teams(results: Path) -> list[TeamDir]:
    """Team folders of a results root (any of a team's result files in them), sorted by name."""
    return sorted((TeamDir(p) for p in Path(results).iterdir() if TeamDir(p).looks_like_team()),
                  key=lambda t: t.team)


# --- team status ------------------------------------------------------------------------------------------

def write_team_status(team: TeamDir, note: str) -> Path:
    """Record why ``team`` has no results (``{"note": ...}``); the ranking lists it last with the note."""
    return write_json(team.status_json, {"note": note, "written_utc": utc_now()})


def read_team_status(team: TeamDir) -> str:
    """The note of ``team_status.json``, or "" when there is none."""
    if not team.status_json.is_file():
        return ""
    return str(read_json(team.status_json).get("note", ""))


def clear_team_status(team: TeamDir) -> None:
    team.status_json.unlink(missing_ok=True)


# --- case records ---------------------------------------------------------------------------------------

def finished_cases(team: TeamDir, run_id: str | None = None) -> set[str]:
    """Cases whose record says they finished (any status), of run ``run_id`` when given: ``--resume`` skips
    them. Unreadable records, and records of another run, count as unfinished."""
    done = set()
    for path in team.cases.glob("*.json") if team.cases.is_dir() else []:
        try:
            record = read_json(path)
            if record.get("finished") and (run_id is None or record.get("run_id") == run_id):
                done.add(path.stem)
        except (OSError, ValueError, AttributeError):
            continue
    return done


def case_records(team: TeamDir, run_id: str | None = None) -> list[dict]:
    """Every finished case record of ``team`` (of run ``run_id`` when given: no table mixes runs), sorted by
    case id."""
    records = []
    for path in sorted(team.cases.glob("*.json")) if team.cases.is_dir() else []:
        record = read_json(path)
        if record.get("finished") and (run_id is None or record.get("run_id") == run_id):
            records.append(record)
    return records


def holds_a_run(team: TeamDir) -> bool:
    """Whether ``team``'s folder already holds results of a run (a run record or case records)."""
    return team.run_json.exists() or (team.cases.is_dir() and any(team.cases.iterdir()))


def read_curves(team: TeamDir) -> dict[str, dict[str, list]]:
    """Per case, the curves a report plots: ``t`` (s since the sampler started), ``gpu`` (device MiB or
    None), ``cpu`` (the official system CPU %), ``ram`` (system used MiB). Records that cannot be read are
    skipped (the caller may log them)."""
    curves = {}
    for path in sorted(team.cases.glob("*.json")) if team.cases.is_dir() else []:
        try:
            record = read_json(path)
            series = record["series"]
            curves[path.stem] = {"t": series["t"], "gpu": series["gpu_device_mib"],
                                 "cpu": record.get("cpu_percent", []), "ram": series["ram_used_mib"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return curves


# --- tables ---------------------------------------------------------------------------------------------

def read_table(path: Path) -> pd.DataFrame | None:
    """A results CSV (``Name`` and ``status`` as text), or None when the file does not exist."""
    import pandas as pd

    if not path.exists():
        return None
    return pd.read_csv(path, dtype={"Name": str, "status": str}, keep_default_na=True)


# --- run.json -------------------------------------------------------------------------------------------

def new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Attempt:
    """One invocation of a run: the first, and each ``--resume`` after it."""

    run_id: str
    started_utc: str = field(default_factory=utc_now)
    finished_utc: str | None = None
    status: str = "running"  # running | complete | interrupted | host-fault
    host: str = field(default_factory=platform.node)
    worker: str | None = None  # the Dask worker that ran it, if any
    monitor: str = ""  # "pid:start-time" of the process that ran it
    host_load: dict | None = None  # the host's load while it ran
    counts: dict[str, int] = field(default_factory=dict)  # status kind -> cases run in this attempt
    moves: list[dict] = field(default_factory=list)  # on a cluster: {"from", "to", "finished", "reason"}


@dataclass
class RunRecord:
    """``run.json`` of a team folder. ``run_id`` is made once and survives ``--resume``; every invocation
    appends an :class:`Attempt`. Fields are added here and nowhere else."""

    run_id: str
    team: str
    cases: list[str]
    settings: dict
    started_utc: str = field(default_factory=utc_now)
    image: dict | None = None
    command: str | None = None
    host: dict = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    calibration: dict | None = None  # on a cluster: per worker, its calibration run (the organizer's record)
    profile: dict | None = None  # the challenge profile's name and sha256 (challenge.profile); None: flare22
    schema: int = RUN_SCHEMA

    def start_attempt(self, monitor: str = "", worker: str | None = None) -> Attempt:
        attempt = Attempt(self.run_id, monitor=monitor, worker=worker)
        self.attempts.append(attempt)
        return attempt

    def save(self, team: TeamDir) -> Path:
        return write_json(team.run_json, asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["attempts"] = [Attempt(**{k: v for k, v in a.items() if k in {f.name for f in fields(Attempt)}})
                              for a in data.get("attempts", [])]
        return cls(**values)


def read_run(team: TeamDir) -> RunRecord | None:
    """The team's run record, or None when there is none or it is unreadable or of an older schema."""
    try:
        data = read_json(team.run_json)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != RUN_SCHEMA:
        return None
    return RunRecord.from_dict(data)


def finish_attempt(attempt: Attempt, status: str, counts: dict[str, int] | None = None) -> None:
    attempt.finished_utc = utc_now()
    attempt.status = status
    if counts is not None:
        attempt.counts = dict(counts)


@contextmanager
def run_status(on_exit: Callable[[str], object]) -> Iterator[None]:
    """Call ``on_exit(status)`` when the block ends: ``complete``; ``interrupted`` on KeyboardInterrupt;
    ``host-fault`` on HostFault; ``failed`` on anything else (which, like those two, propagates)."""
    status = "failed"
    try:
        yield
        status = "complete"
    except HostFault:
        status = "host-fault"
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        on_exit(status)


@contextmanager
def run_attempt(record: RunRecord, save: Callable[[], object], monitor: str = "") -> Iterator[Attempt]:
    """One invocation of a run, recorded: the attempt is started and saved, then finished with its status
    (:func:`run_status`) and saved again, a failed last save ignored (the disk may be what failed). The body
    may fill the attempt's ``counts`` and ``host_load``."""
    attempt = record.start_attempt(monitor=monitor)
    save()

    def finish(status: str) -> None:
        finish_attempt(attempt, status)
        with suppress(OSError):
            save()

    with run_status(finish):
        yield attempt


def relative_to_results(path: Path, results: Path) -> str:
    """``path`` relative to the results root when it is inside it, else its name (never an absolute path)."""
    try:
        return str(Path(path).resolve().relative_to(Path(results).resolve()))
    except ValueError:
        return Path(path).name

