"""Settings of a monitored run, in one small dataclass. Units: seconds, and bytes unless stated."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from challenge import rules
from challenge.profile import Profile, default
from challenge.results import TeamDir, team_dir
from resource_monitor.guard import DiskLimits


@dataclass
class RunSettings:
    """What to run and how. Exactly one of ``image`` (a local image tag) and ``command`` (local mode:
    a host command with ``{inputs}`` and ``{outputs}`` placeholders) is set once an archive is loaded."""

    inputs: Path
    results: Path
    team: str
    image: str | None = None
    command: str | None = None
    gpu: int | None = None  # NVML and docker index; None: no GPU
    timeout_s: float = rules.TIME_LIMIT_S
    interval_s: float = rules.SAMPLE_INTERVAL_S
    memory: str = "28g"
    shm_size: str = "28g"
    cpus: float | None = None
    pids_limit: int = 4096
    cases_glob: str = "*"
    writable_inputs: bool = False
    user: str | None = None  # docker run --user UID:GID; None: the image's own user
    read_only_root: bool = False  # the root file system read-only, a tmpfs /tmp of limits.layer_bytes
    resume: bool = False  # finish the run recorded in the team's folder (its run id is kept)
    fresh: bool = False  # remove the team's earlier results first (without resume or fresh, they refuse the run)
    run_id: str | None = None  # the id of a new run (the organizer's, shared by its teams); None: a new one
    limits: DiskLimits = field(default_factory=DiskLimits)  # caps while a case runs; outputs: also at collection
    log_tail_lines: int = 50  # the case record keeps the log's last lines ...
    log_tail_bytes: int = 8 << 10  # ... at most this many bytes of them (the whole log is cases/<Case>.log)
    log_max_size: str = "50m"  # the container's log is capped there (docker json-file max-size, one file)
    log_max_bytes: int = 50 << 20  # the log kept of a case, in either mode
    listed_outputs: int = 50  # unexpected output names kept in the case record (the rest are counted)
    plots: bool = True
    profile: Profile = field(default_factory=default)  # the challenge's command, efficiency rules, penalties
    extra: dict = field(default_factory=dict)

    def snapshot(self) -> dict:
        """These settings as plain JSON values for run.json (paths as text; the profile as its name and hash)."""
        out: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "profile":
                value = self.profile.identity()
            elif isinstance(value, Path):
                value = str(value)
            elif is_dataclass(value) and not isinstance(value, type):  # the limits
                value = asdict(value)
            out[f.name] = copy.deepcopy(value)
        return out

    @property
    def team_dir(self) -> TeamDir:
        """The team's folder under ``results``; TeamNameError for a team name that is not valid."""
        return team_dir(self.results, self.team)
