"""FLARE22 rank-then-aggregate on hand-made tables, with hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluator.ranking import RankingSettings, TeamResults, case_values, holm, rank


def _team(name, dsc, nsd, time, gpu, cpu, run_status=None, pred_status=None, note=""):
    cases = [f"C{i}" for i in range(len(dsc))]
    metrics = pd.DataFrame({"Name": cases, "DSC_mean": dsc, "NSD_mean": nsd,
                            "status": pred_status or ["ok"] * len(cases)})
    eff = pd.DataFrame({"Name": cases, "Time": time, "AUC_GPU_Time_tol2G": gpu, "AUC_CPU_Time": cpu,
                        "status": run_status or ["ok"] * len(cases)})
    return TeamResults(name, metrics, eff, note)


CASES = ["C0", "C1"]


def test_weights_and_min_ties_by_hand():
    a = _team("a", [0.9, 0.8], [0.9, 0.8], [10, 10], [0, 0], [100, 100])
    b = _team("b", [0.8, 0.8], [0.95, 0.7], [5, 20], [0, 50], [50, 200])
    result = rank([a, b], CASES, RankingSettings(bootstrap_samples=50))
    # C0: a ranks (1, 2, 2, 1, 2) -> (1+2+2+0.5+1)/4 = 1.625; b ranks (2, 1, 1, 1, 1) -> (2+1+1+0.5+0.5)/4 = 1.25
    # C1: DSC tie -> both 1; a (1, 1, 1, 1, 1) -> 4/4 = 1.0; b (1, 2, 2, 2, 2) -> (1+2+2+1+1)/4 = 1.75
    assert result.case_scores.loc["a"].tolist() == [1.625, 1.0]
    assert result.case_scores.loc["b"].tolist() == [1.25, 1.75]
    board = result.leaderboard
    assert board.index.tolist() == ["a", "b"]
    assert board.loc["a", "score"] == pytest.approx(1.3125) and board.loc["b", "score"] == pytest.approx(1.5)


def test_rounding_makes_official_ties():
    a = _team("a", [0.91234], [0.9], [10.001], [0], [1])
    b = _team("b", [0.91236], [0.9], [10.004], [0], [1])
    values = rank([a, b], ["C0"], RankingSettings(bootstrap_samples=10)).ranks
    # DSC rounds to 0.9123 vs 0.9124: not a tie; Time rounds to 10.00 for both: a tie.
    assert values.loc[("a", "C0"), "DSC"] == 2 and values.loc[("b", "C0"), "DSC"] == 1
    assert values.loc[("a", "C0"), "Time"] == values.loc[("b", "C0"), "Time"] == 1


@pytest.mark.parametrize("run_status,pred_status,reason", [
    (["timeout"], ["ok"], "run: timeout"),
    (["error: exit code 1"], ["ok"], "run: error"),
    (["ok"], ["missing"], "prediction: missing"),
    (["ok"], ["invalid: shape"], "prediction: invalid"),
])
def test_failed_cases_take_the_official_worst_values(run_status, pred_status, reason):
    team = _team("t", [0.99], [0.99], [1.0], [0], [5], run_status, pred_status)
    values = case_values(team, ["C0"])
    row = values.loc["C0"]
    assert (row["DSC"], row["NSD"], row["Time"]) == (0, 0, 3600)
    assert (row["AUC_GPU_Time_tol2G"], row["AUC_CPU_Time"]) == (29_491_200, 360_000)
    assert row["penalised"].startswith(reason)


def test_ok_with_warning_is_not_penalised_and_missing_rows_are():
    team = _team("t", [0.9, 0.8], [0.9, 0.8], [1, 2], [np.nan, np.nan], [5, 6], pred_status=["ok; warning: x", "ok"])
    values = case_values(team, ["C0", "C1", "C2"])
    assert values.loc["C0", "DSC"] == 0.9 and values.loc["C0", "AUC_GPU_Time_tol2G"] == 0  # no GPU -> 0
    assert values.loc["C2", "Time"] == 3600 and values.loc["C2", "penalised"] == "no run"


def test_team_that_failed_to_load_ranks_last():
    good = _team("good", [0.5, 0.5], [0.5, 0.5], [100, 100], [0, 0], [100, 100])
    broken = TeamResults("broken", None, None, note="image failed to load: bad archive")
    result = rank([broken, good], CASES, RankingSettings(bootstrap_samples=20))
    assert result.leaderboard.index.tolist() == ["good", "broken"]
    assert result.leaderboard.loc["broken", "status"].startswith("image failed to load")
    assert result.leaderboard.loc["broken", "failed_cases"] == 2


def test_bootstrap_of_a_dominant_team_is_stable():
    n = 12
    best = _team("best", [0.9] * n, [0.9] * n, [1] * n, [0] * n, [1] * n)
    worst = _team("worst", [0.5] * n, [0.5] * n, [9] * n, [9] * n, [9] * n)
    cases = [f"C{i}" for i in range(n)]
    result = rank([worst, best], cases, RankingSettings(bootstrap_samples=1000, seed=3))
    assert result.bootstrap_ranks.shape == (1000, 2)
    assert (result.bootstrap_ranks["best"] == 1).all()
    assert np.allclose(result.kendall_tau, 1.0)
    pair = result.pairwise.set_index(["team", "versus"])
    assert pair.loc[("best", "worst"), "significant"]
    assert not pair.loc[("worst", "best"), "significant"]


def test_bootstrap_of_near_equal_teams_varies():
    rng = np.random.default_rng(0)
    n = 20
    teams = [_team(name, rng.uniform(0.7, 0.9, n), rng.uniform(0.7, 0.9, n), rng.uniform(5, 6, n),
                   [0] * n, rng.uniform(50, 60, n)) for name in "abc"]
    result = rank(teams, [f"C{i}" for i in range(n)], RankingSettings(bootstrap_samples=500))
    assert result.kendall_tau.min() < 1.0  # some resamples reorder the teams
    assert result.bootstrap_ranks.nunique().max() > 1


def test_holm_by_hand():
    # sorted p: 0.01, 0.02, 0.04 -> 3*0.01=0.03, 2*0.02=0.04, 1*0.04=0.04 (monotone)
    np.testing.assert_allclose(holm(np.array([0.04, 0.01, 0.02])), [0.04, 0.03, 0.04])
    np.testing.assert_allclose(holm(np.array([0.5, 0.6])), [1.0, 1.0])


def test_a_case_whose_scoring_failed_never_wins_a_rank():
    """A crafted file that kills the scorer makes its case `error` with NaN scores: it must take the worst
    values, so the team ranks behind an identical honest team (it used to rank first: NaN ranks dropped
    out of the weighted sum)."""
    honest = _team("honest", [0.9, 0.9], [0.9, 0.9], [10, 10], [0, 0], [100, 100])
    crafty = _team("crafty", [0.9, np.nan], [0.9, np.nan], [10, 10], [0, 0], [100, 100],
                   pred_status=["ok", "error: worker died"])
    result = rank([crafty, honest], CASES, RankingSettings(bootstrap_samples=20))
    assert result.leaderboard.index.tolist() == ["honest", "crafty"]
    assert result.values.loc[("crafty", "C1"), "penalised"] == "prediction: error: worker died"
    assert not result.ranks.isna().any().any()


@pytest.mark.parametrize("field", ["dsc", "time", "cpu"])
def test_a_nan_figure_of_an_ok_case_is_penalised(field):
    figures = {"dsc": [0.9], "nsd": [0.9], "time": [10.0], "gpu": [0.0], "cpu": [100.0]}
    figures[field] = [np.nan]
    nan_team = _team("nan", **figures)
    honest = _team("honest", [0.5], [0.5], [99.0], [0.0], [500.0])
    result = rank([nan_team, honest], ["C0"], RankingSettings(bootstrap_samples=10))
    assert result.values.loc[("nan", "C0"), "penalised"].startswith("not a number")
    assert result.leaderboard.index.tolist() == ["honest", "nan"] and not result.ranks.isna().any().any()
