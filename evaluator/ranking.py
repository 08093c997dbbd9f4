"""FLARE22 rank-then-aggregate, with bootstrap rank stability and pairwise significance.

Inputs are per-team tables keyed by case id (``Name``): the evaluator's metrics.csv and the resource
monitor's efficiency.csv. Units: Time in s, AUC_GPU_Time_tol2G in MiB*s, AUC_CPU_Time in %*s.

Which metrics are ranked, their weights, directions, rounding and penalties come from the challenge profile
(challenge.profile; ``[ranking]``); the flare22 profile's scheme (flare22.grand-challenge.org/Evaluation;
docs/metrics.md):
1. per case, a team's DSC and NSD are the means over the 13 organs;
2. a case whose run did not end ``ok``, whose prediction is missing or invalid, whose scoring failed
   (``error``), or with a ranked figure that is not a finite number, takes the official worst values
   (DSC 0, NSD 0, Time 3600, AUC_GPU 29491200, AUC_CPU 360000), whatever was measured: no NaN ever
   enters a rank, and no failure can rank better than an honest result;
3. values are rounded as the official CSVs were, so that ties fall as they did;
4. per case and metric, teams are ranked (ties take the minimum rank);
5. a team's score is the mean over cases of (r_DSC + r_NSD + r_Time + 0.5 r_GPU + 0.5 r_CPU) / 4.
Lower scores are better.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from challenge.profile import Profile, RankedMetric, default

METRICS = tuple(m.name for m in default().metrics)  # flare22's: DSC, NSD, Time, AUC_GPU_Time_tol2G, AUC_CPU_Time


@dataclass
class TeamResults:
    """One team's tables. ``metrics`` needs Name, DSC_mean, NSD_mean, status; ``efficiency`` needs Name,
    Time, AUC_GPU_Time_tol2G, AUC_CPU_Time, status. Either may be None (e.g. the image failed to load)."""

    team: str
    metrics: pd.DataFrame | None
    efficiency: pd.DataFrame | None
    note: str = ""  # e.g. "image failed to load: ..."


@dataclass
class RankingSettings:
    bootstrap_samples: int = 1000
    seed: int = 0
    alpha: float = 0.05
    profile: Profile | None = field(default=None, repr=False)  # None: flare22

    @property
    def metrics(self) -> tuple[RankedMetric, ...]:
        return (self.profile or default()).metrics

    def describe(self) -> dict:
        """What the leaderboard records of these settings."""
        return {"bootstrap_samples": self.bootstrap_samples, "seed": self.seed, "alpha": self.alpha,
                "profile": (self.profile or default()).identity()}


@dataclass
class Ranking:
    values: pd.DataFrame  # (team, case) x ranked metrics after penalties and rounding, plus `penalised`
    ranks: pd.DataFrame  # (team, case) x metrics: per-case ranks, ties -> min
    case_scores: pd.DataFrame  # team x case: (weighted rank sum) / the profile's normaliser (flare22: 4)
    leaderboard: pd.DataFrame  # one row per team, best first
    bootstrap_ranks: pd.DataFrame  # sample x team
    kendall_tau: np.ndarray  # per bootstrap sample, against the full ranking
    pairwise: pd.DataFrame  # one-sided Wilcoxon, Holm-adjusted
    settings: RankingSettings = field(default_factory=RankingSettings)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The ranked metrics' names, in the profile's order."""
        return tuple(m.name for m in self.settings.metrics)


def case_values(team: TeamResults, cases: list[str], metrics: tuple[RankedMetric, ...] | None = None) -> pd.DataFrame:
    """The ranked metrics (the profile's; default flare22's five) per case for one team, with their penalties
    (the official worst values) where a case failed.

    An empty GPU figure (a metric marked ``gpu``: a host with no GPU) counts as 0 for a run that ended ok, so
    that every team ties on it rather than being penalised.
    """
    ranked = metrics or default().metrics
    out = pd.DataFrame(index=pd.Index(cases, name="Name"), columns=[m.name for m in ranked], dtype=float)
    reasons = pd.Series("", index=out.index, dtype=object)
    tables = {"metrics": _by_case(team.metrics), "efficiency": _by_case(team.efficiency)}
    for case in cases:
        reason = _failure(case, tables["metrics"], tables["efficiency"], team.note)
        figures = [] if reason else [_figure(tables[m.table], case, m) for m in ranked]
        reason = reason or _not_a_number(ranked, figures)
        if reason:
            out.loc[case] = [m.penalty for m in ranked]
            reasons[case] = reason
            continue
        out.loc[case] = figures
    for m in ranked:
        out[m.name] = out[m.name].round(m.decimals)
    out["penalised"] = reasons
    return out


def _figure(table: pd.DataFrame, case: str, metric: RankedMetric) -> float:
    """One ranked figure of a case that ran ok: NaN if missing or not a number, except a GPU figure (0)."""
    raw = table.loc[case, metric.column] if metric.column in table.columns else np.nan  # no column: NaN
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # not a number (a hostile or broken table)
        value = float("nan")
    if np.isnan(value) and metric.gpu:
        return 0.0
    return value


def _not_a_number(ranked: tuple[RankedMetric, ...], figures: list[float]) -> str:
    """A reason when a ranked figure (:func:`_figure`) of a case that ran ok is missing or not a finite number
    (GPU figures may be empty): such a case takes the worst values, so that no NaN ever enters a rank."""
    bad = [m.name for m, value in zip(ranked, figures, strict=True) if not np.isfinite(value)]
    return f"not a number: {', '.join(bad)}" if bad else ""


def _by_case(table: pd.DataFrame | None) -> pd.DataFrame:
    if table is None or table.empty:
        return pd.DataFrame(columns=["status"])
    return table.assign(Name=table["Name"].astype(str)).drop_duplicates("Name", keep="last").set_index("Name")


def _failure(case: str, metrics: pd.DataFrame, efficiency: pd.DataFrame, note: str) -> str:
    if note:
        return note
    if case not in efficiency.index:
        return "no run"
    run_status = str(efficiency.loc[case, "status"])
    if run_status != "ok":
        return f"run: {run_status}"
    if case not in metrics.index:
        return "not scored"
    status = str(metrics.loc[case, "status"])
    if not (status == "ok" or status.startswith("ok;")):  # missing, invalid, or error (scoring failed)
        return f"prediction: {status}"
    return ""


def rank(teams: list[TeamResults], cases: list[str], settings: RankingSettings | None = None) -> Ranking:
    """Rank ``teams`` over ``cases`` (the GT's case ids). Needs at least one team and one case."""
    settings = settings or RankingSettings()
    if not teams or not cases:
        raise ValueError("ranking needs at least one team and one case")
    ranked = settings.metrics
    values = pd.concat({t.team: case_values(t, cases, ranked) for t in teams}, names=["team", "Name"])
    ranks = pd.DataFrame(index=values.index)
    for m in ranked:
        ranks[m.name] = values[m.name].groupby(level="Name").rank(method="min", ascending=not m.higher_is_better)
    names = [m.name for m in ranked]
    weights = pd.Series({m.name: m.weight for m in ranked})
    composite = (ranks[names] * weights).sum(axis=1) / (settings.profile or default()).normaliser
    case_scores = composite.unstack("Name").reindex(columns=cases)
    board = _leaderboard(values, ranks, case_scores, teams, names)
    boot, tau = bootstrap(case_scores, board["rank"], settings)
    pairwise = wilcoxon_holm(case_scores, board.index.tolist(), settings.alpha)
    return Ranking(values, ranks, case_scores, board, boot, tau, pairwise, settings)


def _leaderboard(values: pd.DataFrame, ranks: pd.DataFrame, case_scores: pd.DataFrame,
                 teams: list[TeamResults], names: list[str]) -> pd.DataFrame:
    score = case_scores.mean(axis=1)
    board = pd.DataFrame({"score": score})
    board["rank"] = score.rank(method="min").astype(int)
    for metric in names:
        board[f"mean_rank_{metric}"] = ranks[metric].groupby(level="team").mean()
        board[metric] = values[metric].groupby(level="team").mean()
    failed = values["penalised"].ne("").groupby(level="team").sum().astype(int)
    board["failed_cases"] = failed
    board["cases"] = values.groupby(level="team").size()
    notes = {t.team: t.note for t in teams}
    board["status"] = [notes[t] or ("all cases failed" if failed[t] == board.loc[t, "cases"] else
                                    f"{failed[t]} case(s) penalised" if failed[t] else "ok") for t in board.index]
    board.index.name = "team"
    return board.sort_values(["rank", "score"], kind="stable")


def bootstrap(case_scores: pd.DataFrame, full_rank: pd.Series,
              settings: RankingSettings) -> tuple[pd.DataFrame, np.ndarray]:
    """Rank distribution when the cases are resampled with replacement, and Kendall's tau of each
    bootstrap ranking against the full one (NaN when fewer than two teams)."""
    rng = np.random.default_rng(settings.seed)
    matrix = case_scores.to_numpy()  # team x case
    n_cases = matrix.shape[1]
    idx = rng.integers(0, n_cases, size=(settings.bootstrap_samples, n_cases))
    scores = matrix[:, idx].mean(axis=2).T  # sample x team
    ranks = pd.DataFrame(scores, columns=case_scores.index).rank(axis=1, method="min")
    reference = full_rank.reindex(case_scores.index).to_numpy()
    if len(reference) < 2:
        return ranks, np.full(len(ranks), np.nan)
    tau = np.array([stats.kendalltau(reference, row).statistic for row in ranks.to_numpy()])
    return ranks, tau


def wilcoxon_holm(case_scores: pd.DataFrame, order: list[str], alpha: float = 0.05) -> pd.DataFrame:
    """One-sided Wilcoxon signed-rank tests on per-case scores for every ordered pair (A, B):
    H1 = A's per-case scores are lower (better) than B's. p-values are Holm-adjusted over all pairs.
    A pair whose per-case scores are all equal gets p = 1."""
    rows = []
    for a in order:
        for b in order:
            if a == b:
                continue
            diff = case_scores.loc[a].to_numpy() - case_scores.loc[b].to_numpy()
            if np.allclose(diff, 0):
                p = 1.0
            else:
                p = float(stats.wilcoxon(diff, alternative="less", zero_method="wilcox").pvalue)
            rows.append({"team": a, "versus": b, "p_value": p})
    table = pd.DataFrame(rows, columns=["team", "versus", "p_value"])
    table["p_holm"] = holm(table["p_value"].to_numpy()) if len(table) else []
    table["significant"] = table["p_holm"] < alpha
    return table


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (same order as the input)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out
