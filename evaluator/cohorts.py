"""Results per cohort: a CSV ``Name,cohort`` assigns every case to a cohort (FLARE22's paper reports its
North American, European and Asian test sets apart).

- :func:`read_cohorts`: the file, checked: a bounded size, the header ``Name,cohort``, one cohort per case,
  and every case scored or ranked present (a missing one is an error naming it).
- :func:`cohort_summary`: per cohort, the cases and the mean DSC and NSD of one team (``summary.json``).
- :func:`cohort_results`: from a ranking, per team and cohort the mean DSC and NSD (after penalties, as ranked)
  and the rank of the team among all teams on that cohort's cases alone (the mean of its per-case scores
  there, ties taking the minimum rank); and per team and metric a Kruskal-Wallis test across the cohorts with
  pairwise two-sided Mann-Whitney U tests, Holm-adjusted over the team's pairs of cohorts.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from challenge.files import read_bounded
from evaluator.ranking import Ranking, holm

MAX_COHORT_FILE_BYTES = 8 << 20
MAX_COHORT_NAME = 64
TESTED = ("DSC", "NSD")
_COHORT = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


class CohortError(ValueError):
    """A cohort file that cannot be used; one line naming the file (and the case or line)."""


def read_cohorts(path: Path, cases: Iterable[str]) -> dict[str, str]:
    """Case id -> cohort for every case of ``cases`` (sorted by case), from the CSV at ``path``.

    The file has the header ``Name,cohort`` (more columns are ignored), at most 8 MiB; a cohort is 1 to 64
    printable characters. Rows for cases outside ``cases`` are ignored (a file may cover several phases).
    CohortError for an unreadable file, a wrong header, a case given twice with two cohorts, or a case of
    ``cases`` that the file does not list."""
    try:
        data = read_bounded(path, MAX_COHORT_FILE_BYTES, "--cohorts")
    except ValueError as err:
        raise CohortError(str(err)) from None
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as err:
        raise CohortError(f"--cohorts {path}: not a UTF-8 CSV file ({err})") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["Name", "cohort"]:
        raise CohortError(f"--cohorts {path}: the first line must be the header Name,cohort")
    found: dict[str, str] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise CohortError(f"--cohorts {path}: line {number}: expected Name,cohort")
        name, cohort = row[0].strip(), row[1].strip()
        if not _COHORT.fullmatch(cohort):
            raise CohortError(f"--cohorts {path}: line {number}: a cohort is 1 to {MAX_COHORT_NAME} printable "
                              "characters")
        if found.get(name, cohort) != cohort:
            raise CohortError(f"--cohorts {path}: case {name} is in two cohorts ({found[name]}, {cohort})")
        found[name] = cohort
    wanted = sorted(cases)
    absent = [case for case in wanted if case not in found]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise CohortError(f"--cohorts {path}: case {absent[0]} is not in the file{more}")
    return {case: found[case] for case in wanted}


def cohort_names(cohorts: dict[str, str]) -> list[str]:
    return sorted(set(cohorts.values()))


def cohort_summary(table: pd.DataFrame, cohorts: dict[str, str]) -> dict[str, dict]:
    """Per cohort (sorted): the number of cases and the mean DSC_mean and NSD_mean over them (metrics.csv
    values; a case in error, NaN, is left out of the means), for ``summary.json``."""
    names = table["Name"].astype(str)
    out = {}
    for cohort in cohort_names(cohorts):
        rows = table[names.map(cohorts.get).eq(cohort).to_numpy()]
        out[cohort] = {"cases": len(rows),
                       **{column: _mean(rows[column]) for column in ("DSC_mean", "NSD_mean")}}
    return out


def _mean(values: pd.Series) -> float | None:
    value = pd.to_numeric(values, errors="coerce").mean()
    return None if pd.isna(value) else float(value)


@dataclass
class CohortResults:
    table: pd.DataFrame  # one row per (team, cohort): cases, DSC, NSD, score, rank, overall_rank
    tests: pd.DataFrame  # one row per (team, metric, test, pair): statistic, p_value, p_holm
    cohorts: list[str]


def cohort_results(ranking: Ranking, cohorts: dict[str, str]) -> CohortResults:
    """Per team and cohort: the mean ranked DSC and NSD, the mean per-case score and the rank among the teams
    on that cohort's cases; and the per-team tests of a difference between cohorts (module docstring)."""
    names = cohort_names(cohorts)
    scores = ranking.case_scores
    overall = ranking.leaderboard["rank"]
    rows = []
    for cohort in names:
        cases = [c for c in scores.columns if cohorts[str(c)] == cohort]
        mean_score = scores[cases].mean(axis=1)
        rank = mean_score.rank(method="min").astype(int)
        for team in ranking.leaderboard.index:
            values = ranking.values.loc[team].loc[cases]
            rows.append({"team": team, "cohort": cohort, "cases": len(cases),
                         **{m: float(values[m].mean()) for m in TESTED if m in values.columns},
                         "score": float(mean_score[team]), "rank": int(rank[team]), "overall_rank": int(overall[team])})
    table = pd.DataFrame(rows)
    return CohortResults(table, _tests(ranking, cohorts, names), names)


def _tests(ranking: Ranking, cohorts: dict[str, str], names: list[str]) -> pd.DataFrame:
    rows = []
    for team in ranking.leaderboard.index:
        values = ranking.values.loc[team]
        groups = {c: values.index.map(lambda case: cohorts[str(case)]) == c for c in names}
        for metric in (m for m in TESTED if m in values.columns):
            samples = {c: values.loc[groups[c], metric].to_numpy(dtype=float) for c in names}
            rows.append({"team": team, "metric": metric, "test": "kruskal", "cohort_a": "", "cohort_b": "",
                         **_kruskal(list(samples.values()))})
            pairs = [{"team": team, "metric": metric, "test": "mannwhitney", "cohort_a": a, "cohort_b": b,
                      **_mannwhitney(samples[a], samples[b])} for a, b in itertools.combinations(names, 2)]
            adjusted: list[float] = holm(np.array([p["p_value"] for p in pairs])).tolist() if pairs else []
            for pair, p_holm in zip(pairs, adjusted, strict=True):
                pair["p_holm"] = float(p_holm)
            rows.extend(pairs)
    columns = ["team", "metric", "test", "cohort_a", "cohort_b", "statistic", "p_value", "p_holm"]
    return pd.DataFrame(rows, columns=columns)


def _kruskal(samples: list[np.ndarray]) -> dict[str, float]:
    """H and p across the cohorts; p = 1 where every value is equal (no difference to find) and NaN with fewer
    than two cohorts."""
    if len(samples) < 2 or any(len(s) == 0 for s in samples):
        return {"statistic": math.nan, "p_value": math.nan, "p_holm": math.nan}
    if np.ptp(np.concatenate(samples)) == 0:
        return {"statistic": 0.0, "p_value": 1.0, "p_holm": 1.0}
    result = stats.kruskal(*samples)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "p_holm": float(result.pvalue)}


def _mannwhitney(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """U (of ``a``) and the two-sided p (exact where scipy's default allows); p = 1 where every value is equal."""
    if len(a) == 0 or len(b) == 0:
        return {"statistic": math.nan, "p_value": math.nan}
    if np.ptp(np.concatenate([a, b])) == 0:
        return {"statistic": float(len(a) * len(b) / 2), "p_value": 1.0}
    result = stats.mannwhitneyu(a, b, alternative="two-sided")
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue)}
