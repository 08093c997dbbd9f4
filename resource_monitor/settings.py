"""Settings of a monitored run, in one small dataclass. Units: seconds, bytes, MiB where stated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from challenge import rules
from challenge.results import TeamDir, team_dir


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
    resume: bool = False
    output_cap_bytes: int = 1 << 30  # 1 GiB per prediction file
    log_tail_lines: int = 50
    log_max_size: str = "50m"  # the container's log is capped there (docker json-file max-size, one file)
    plots: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def team_dir(self) -> TeamDir:
        """The team's folder under ``results``; TeamNameError for a team name that is not valid."""
        return team_dir(self.results, self.team)
