"""The monitor's files: per-case JSON records, efficiency CSVs (rebuilt from the records, written
atomically), and readers for the leaderboard.

``cases/<Case>.json`` holds: case, status, finished, timestamps (UTC ISO and seconds since the sampler
started), exit_code, oom, timed_out, log_tail, params (the exact container parameters or command),
flare22 and accurate figures, and the sampled series (see :class:`resource_monitor.sampling.Series`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from challenge.files import atomic_write
from resource_monitor.efficiency import ACCURATE_COLUMNS, FLARE22_COLUMNS, official_cpu_percent
from resource_monitor.sampling import Series


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: json.dump(data, f, indent=1, default=_default))


def _default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finished_cases(cases_dir: Path) -> set[str]:
    """Cases whose record says they finished (any status): ``--resume`` skips them."""
    done = set()
    for path in cases_dir.glob("*.json") if cases_dir.is_dir() else []:
        try:
            if json.loads(path.read_text()).get("finished"):
                done.add(path.stem)
        except (OSError, ValueError):
            continue
    return done


def write_efficiency_tables(team_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild efficiency.csv and efficiency_accurate.csv from every finished case record."""
    flare, accurate = [], []
    for path in sorted((team_dir / "cases").glob("*.json")):
        record = json.loads(path.read_text())
        if not record.get("finished"):
            continue
        flare.append({"Name": record["case"], **record["flare22"], "status": record["status"]})
        accurate.append({"Name": record["case"], "status": record["status"], **record["accurate"]})
    tables = (pd.DataFrame(flare, columns=FLARE22_COLUMNS), pd.DataFrame(accurate, columns=ACCURATE_COLUMNS))
    for name, table in zip(("efficiency.csv", "efficiency_accurate.csv"), tables, strict=True):
        atomic_write(team_dir / name, lambda f, table=table: table.to_csv(f, index=False))
    return tables


def read_efficiency(team_dir: Path) -> pd.DataFrame:
    """efficiency.csv of a team folder (Name as str)."""
    return pd.read_csv(team_dir / "efficiency.csv", dtype={"Name": str, "status": str})


def read_series(record_path: Path) -> dict[str, list]:
    """The curves of one case record: ``t`` (s), ``gpu`` (device MiB or None), ``cpu`` (official %)."""
    record = json.loads(record_path.read_text())
    series = Series.from_json(record["series"])
    cpu = official_cpu_percent(series).tolist() if len(series) else []
    return {"t": series.t, "gpu": series.gpu_device_mib, "cpu": cpu}
