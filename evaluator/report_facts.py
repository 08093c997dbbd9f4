"""The facts a published report states, computed without plotting or HTML: what it may show of a host
(no absolute path), the harness's version and commit, whether the significance test can reach alpha at
all, which teams shared their host, and each team's mean GPU memory and RAM.

Every function here is pure or bounded (``harness_commit`` runs git once, with a timeout, and never
raises).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import challenge
from challenge.results import RunRecord

Curves = dict[str, dict[str, list]]  # case -> {"t": [s], "gpu": [MiB], "cpu": [%], "ram": [MiB]}

DEFAULT_TITLE = "FLARE22-style challenge"
BUSY_FLAG = "shared the host with other load: its CPU and Time figures are host-wide"

# An absolute POSIX path (after the start, a space, a quote, a bracket, "=", ",", ";" or ":"), or a
# Windows drive path. A "/" inside a word ("MiB/s", "and/or", "https://host/x") is not a path.
_POSIX_PATH = re.compile(r"""(?<![^\s'"(\[{=,;:])(?:/[^\s/'"<>|;,:()\[\]{}]+)+/?""")
_WINDOWS_PATH = re.compile(r"""(?<![\w])[A-Za-z]:\\[^\s'"<>|;,]*""")


def strip_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last component (``/tmp/x/team.tar.gz: bad`` ->
    ``team.tar.gz: bad``); other text is left as it is."""
    text = _POSIX_PATH.sub(lambda m: _last_component(m.group(0), "/"), text)
    return _WINDOWS_PATH.sub(lambda m: _last_component(m.group(0), "\\"), text)


def _last_component(path: str, sep: str) -> str:
    parts = [p for p in path.split(sep) if p]
    return parts[-1] if parts else ""


def strip_paths_in(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, numbers, paths) with :func:`strip_paths` applied to
    every string and key; a :class:`~pathlib.Path` becomes its name."""
    if isinstance(value, dict):
        return {strip_paths(str(k)): strip_paths_in(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_paths_in(v) for v in value]
    if isinstance(value, Path):
        return value.name
    if isinstance(value, str):
        return strip_paths(value)
    return value


def utc_stamp(now: datetime | None = None) -> str:
    """``now`` (default: the current time) as ``YYYY-MM-DD HH:MM UTC``."""
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def source_root() -> Path:
    """The folder that holds the harness's packages (``challenge/``, ``evaluator/``, ...)."""
    return Path(challenge.__file__).resolve().parent.parent


def harness_commit(root: Path | None = None) -> str:
    """``git rev-parse --short HEAD`` of ``root`` (default :func:`source_root`) when ``root`` is itself a git
    checkout (it holds ``.git``), else "unknown". Never raises; git's own environment variables are ignored."""
    root = root or source_root()
    if not (root / ".git").exists():
        return "unknown"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False, env=env)
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown"
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{4,40}", sha) else "unknown"


def harness_version() -> str:
    return str(challenge.__version__)


# --- significance -----------------------------------------------------------------------------------------

def ordered_pairs(n_teams: int) -> int:
    """The number of tests :func:`evaluator.ranking.wilcoxon_holm` makes: every ordered pair of teams."""
    return n_teams * (n_teams - 1)


def smallest_holm_p(n_cases: int, n_teams: int) -> float:
    """The smallest Holm-adjusted p-value any pair can get: an exact one-sided Wilcoxon signed-rank test on
    n cases cannot go below 2**-n, and Holm multiplies the smallest p by the number of tests m."""
    return ordered_pairs(n_teams) * 2.0 ** -n_cases


def significance_unreachable(n_cases: int, n_teams: int, alpha: float) -> bool:
    """True when no pair can be significant at ``alpha`` whatever the results (m * 2**-n >= alpha, m > 0)."""
    return ordered_pairs(n_teams) > 0 and smallest_holm_p(n_cases, n_teams) >= alpha


def cases_needed(n_teams: int, alpha: float) -> int:
    """The fewest cases at which m * 2**-n < alpha (m ordered pairs of ``n_teams``)."""
    m = ordered_pairs(n_teams)
    return max(1, math.floor(math.log2(m / alpha)) + 1) if m else 0


# --- per-team facts ---------------------------------------------------------------------------------------

@dataclass
class TeamFiles:
    """What the report shows of a team beyond its ranked values: its efficiency.csv, its run record, and its
    per-case plots and logs in the results folder (case -> path; files that exist only)."""

    efficiency: pd.DataFrame | None = None
    run: RunRecord | None = None
    plots: dict[str, Path] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)


@dataclass
class BusyAttempt:
    """One attempt of a run whose host carried other load (``host_load["busy"]``)."""

    started_utc: str
    other_cores_mean: float | None
    other_cores_max: float | None
    load1_max: float | None


@dataclass
class TeamFacts:
    """What the report says of a team beyond its ranked values."""

    gpu_mem_mib: float | None = None  # mean over cases of efficiency.csv's GPU_Mem; None without a GPU
    ram_mib: float | None = None  # mean over cases of efficiency.csv's RAM
    busy: list[BusyAttempt] = field(default_factory=list)


def busy_attempts(run: RunRecord | None) -> list[BusyAttempt]:
    """The attempts of ``run`` whose ``host_load["busy"]`` is true; none when there is no run record or an
    attempt has no (or no dict) ``host_load`` (older runs)."""
    found = []
    for attempt in run.attempts if run is not None else []:
        load = attempt.host_load
        if isinstance(load, dict) and load.get("busy") is True:
            found.append(BusyAttempt(str(attempt.started_utc), _number(load.get("other_cores_mean")),
                                     _number(load.get("other_cores_max")), _number(load.get("load1_max"))))
    return found


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def column_mean(efficiency: pd.DataFrame | None, column: str, cases: Iterable[str]) -> float | None:
    """The mean of ``column`` over the rows of ``cases`` where it is a finite number; None when there is no
    such value (no table, no column, or empty figures, e.g. GPU_Mem on a host without a GPU)."""
    if efficiency is None or column not in efficiency.columns or "Name" not in efficiency.columns:
        return None
    rows = efficiency[efficiency["Name"].astype(str).isin(set(cases))]
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def team_facts(efficiency: pd.DataFrame | None, run: RunRecord | None, cases: Iterable[str]) -> TeamFacts:
    """Mean GPU memory (stable max) and RAM over ``cases`` from a team's efficiency.csv, and its busy attempts."""
    cases = list(cases)
    return TeamFacts(column_mean(efficiency, "GPU_Mem", cases), column_mean(efficiency, "RAM", cases),
                     busy_attempts(run))
