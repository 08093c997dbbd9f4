"""The monitor's records in a team folder (the layout is :mod:`challenge.results`'s): the case record and
the two efficiency CSVs, rebuilt from the finished case records.

``cases/<Case>.json`` holds: case, run_id, status, finished, timestamps (UTC ISO and seconds since the
sampler started), exit_code, oom, timed_out, log_tail, params (the exact container parameters or command),
flare22 and accurate figures, the sampled series (see :class:`resource_monitor.sampling.Series`) and
``cpu_percent``, the official system CPU % per sample (what reports plot).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

import pandas as pd

from challenge.files import atomic_write
from challenge.results import TeamDir, case_records
from resource_monitor.efficiency import ACCURATE_COLUMNS, FLARE22_COLUMNS


def write_efficiency_tables(team: TeamDir, run_id: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild efficiency.csv and efficiency_accurate.csv from every finished case record (of run ``run_id``
    when given: no table mixes runs)."""
    flare, accurate = [], []
    for record in case_records(team, run_id):
        flare.append({"Name": record["case"], **record["flare22"], "status": record["status"]})
        accurate.append({"Name": record["case"], "status": record["status"], **record["accurate"]})
    tables = (pd.DataFrame(flare, columns=FLARE22_COLUMNS), pd.DataFrame(accurate, columns=ACCURATE_COLUMNS))
    for path, table in zip((team.efficiency_csv, team.efficiency_accurate_csv), tables, strict=True):
        atomic_write(path, table_writer(table))
    return tables


def table_writer(table: pd.DataFrame) -> Callable[[TextIO], object]:
    """A writer of ``table`` as CSV (no index) for :func:`challenge.files.atomic_write`."""
    return lambda handle: table.to_csv(handle, index=False)
