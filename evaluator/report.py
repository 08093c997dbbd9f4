"""Leaderboard files and a self-contained ``index.html`` (no network: plots are inline PNGs, CSS inline).

Writes into LEADERBOARD_DIR: leaderboard.csv, leaderboard.json, case_ranks.csv, bootstrap_ranks.csv,
pairwise.csv, index.html, with cohorts cohorts.csv and cohort_tests.csv, and copies of each team's per-case
plots and logs that the page links to:
``teams/<team>/plots/<Case>.png`` and ``teams/<team>/logs/<Case>.log`` (logs with absolute paths cut to
their last component). What the page shows: :mod:`evaluator.report_html`; its figures:
:mod:`evaluator.report_plots`.
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd

from challenge.files import atomic_write, atomic_write_bytes
from challenge.teams import TeamNameError, check_team
from evaluator.cohorts import CohortResults
from evaluator.ranking import Ranking
from evaluator.report_facts import Curves, TeamFiles, strip_paths
from evaluator.report_html import CaseLinks, ReportData, render_page

__all__ = ["Curves", "TeamFiles", "copy_team_files", "write_leaderboard"]

log = logging.getLogger(__name__)
TEAMS_DIR = "teams"


def write_leaderboard(ranking: Ranking, out_dir: Path, metrics: dict[str, pd.DataFrame],
                      curves: dict[str, Curves], settings: dict, teams: dict[str, TeamFiles] | None = None,
                      cohorts: CohortResults | None = None) -> Path:
    """Write every leaderboard file into ``out_dir``; returns the path of index.html.

    ``teams`` (optional): per team, its efficiency table, run record and per-case plot and log paths; without
    it the page has no GPU memory, RAM, host-load flags or file links. ``settings["title"]`` names the
    challenge on the page (default "FLARE22-style challenge"). ``cohorts``: the per-cohort results
    (evaluator.cohorts), written to cohorts.csv and cohort_tests.csv and shown on the page."""
    out_dir.mkdir(parents=True, exist_ok=True)
    board = ranking.leaderboard.reset_index()
    atomic_write(out_dir / "leaderboard.csv", lambda f: board.to_csv(f, index=False))
    payload = {"leaderboard": json.loads(board.to_json(orient="records")),
               "kendall_tau": _tau_summary(ranking.kendall_tau),
               "rank_distribution": _rank_distribution(ranking),
               "settings": settings}
    if cohorts is not None:
        payload["cohorts"] = json.loads(cohorts.table.to_json(orient="records"))
        atomic_write(out_dir / "cohorts.csv", lambda f: cohorts.table.to_csv(f, index=False))
        atomic_write(out_dir / "cohort_tests.csv", lambda f: cohorts.tests.to_csv(f, index=False))
    else:
        for name in ("cohorts.csv", "cohort_tests.csv"):  # derived: never left from an earlier ranking
            (out_dir / name).unlink(missing_ok=True)
    atomic_write(out_dir / "leaderboard.json", lambda f: json.dump(payload, f, indent=2))
    table = ranking.values.join(ranking.ranks.add_suffix("_rank")).reset_index()
    atomic_write(out_dir / "case_ranks.csv", lambda f: table.to_csv(f, index=False))
    atomic_write(out_dir / "bootstrap_ranks.csv", lambda f: ranking.bootstrap_ranks.to_csv(f, index_label="sample"))
    atomic_write(out_dir / "pairwise.csv", lambda f: ranking.pairwise.to_csv(f, index=False))
    links = copy_team_files(out_dir, teams or {})
    page = render_page(ReportData(ranking, metrics, curves, settings, teams or {}, links, cohorts))
    atomic_write(out_dir / "index.html", lambda f: f.write(page))
    return out_dir / "index.html"


def copy_team_files(out_dir: Path, teams: dict[str, TeamFiles]) -> dict[str, CaseLinks]:
    """Copy each team's per-case plots and logs beside the report, through :mod:`challenge.files`:
    ``teams/<team>/plots/<Case>.png`` as they are, ``teams/<team>/logs/<Case>.log`` with absolute paths cut
    to their last component. Returns team -> case -> {"plot"|"log": href relative to ``out_dir``}.

    A team whose name is not a valid team name, a case id that is not a plain file name, or a source that
    cannot be read is not copied (and not linked). Copies of an earlier ranking into ``out_dir`` are removed
    first (they are derived), so no team or case that dropped out stays linked."""
    shutil.rmtree(out_dir / TEAMS_DIR, ignore_errors=True)
    links: dict[str, CaseLinks] = {}
    for team, files in teams.items():
        try:
            check_team(team)
        except TeamNameError:
            continue
        for kind, sources, folder, suffix in (("plot", files.plots, "plots", ".png"),
                                              ("log", files.logs, "logs", ".log")):
            for case, source in sources.items():
                if not _plain_name(case):
                    continue
                relative = f"{TEAMS_DIR}/{team}/{folder}/{case}{suffix}"
                try:
                    data = source.read_bytes()
                    if kind == "log":
                        data = strip_paths(data.decode("utf-8", errors="replace")).encode("utf-8")
                    atomic_write_bytes(out_dir / relative, data)
                except OSError as err:
                    log.warning("%s/%s: %s not copied: %s", team, case, kind, err.strerror or err)
                    continue
                links.setdefault(team, {}).setdefault(case, {})[kind] = urllib.parse.quote(relative)
    return links


def _plain_name(name: str) -> bool:
    """Whether ``name`` can be one file name under a folder: not empty, no separator, no leading dot."""
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")


def _tau_summary(tau: np.ndarray) -> dict[str, float] | None:
    """Median, mean and 5th percentile of Kendall's tau over bootstrap samples; None with one team."""
    if len(tau) == 0 or np.isnan(tau).all():
        return None
    return {"median": float(np.nanmedian(tau)), "mean": float(np.nanmean(tau)),
            "p05": float(np.nanpercentile(tau, 5))}


def _rank_distribution(ranking: Ranking) -> dict[str, dict[str, float]]:
    shares = {team: ranking.bootstrap_ranks[team].value_counts(normalize=True).sort_index()
              for team in ranking.bootstrap_ranks.columns}
    return {str(team): {str(int(r)): float(f) for r, f in zip(s.index.to_numpy(), s.to_numpy(), strict=True)}
            for team, s in shares.items()}
