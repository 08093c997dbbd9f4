"""Results per cohort (evaluator.cohorts): a hand-computed two-cohort example (means, per-cohort ranks,
Kruskal-Wallis and Mann-Whitney by hand), a cohort file that misses a case or is malformed, and the chain
from `organizer challenge --cohorts` to the summary, the leaderboard files and the report."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pandas as pd
import pytest
from scipy import stats

from evaluator.cli import main as evaluate_main
from evaluator.cohorts import CohortError, cohort_results, cohort_summary, read_cohorts
from evaluator.ranking import RankingSettings, TeamResults, rank
from organizer.cli import main as challenge_main
from tests.conftest import team_data

CASES = ["C1", "C2", "C3", "C4", "C5"]
COHORTS = {"C1": "Europe", "C2": "Europe", "C3": "Asia", "C4": "Asia", "C5": "Asia"}


def _team(name: str, dsc: list[float], time_s: list[float]) -> TeamResults:
    metrics = pd.DataFrame({"Name": CASES, "DSC_mean": dsc, "NSD_mean": dsc, "status": "ok"})
    efficiency = pd.DataFrame({"Name": CASES, "Time": time_s, "AUC_GPU_Time_tol2G": 0.0, "AUC_CPU_Time": 10.0,
                               "status": "ok"})
    return TeamResults(name, metrics, efficiency)


def test_two_cohorts_by_hand():
    """Team a is better in Europe (C1, C2), team b in Asia (C3..C5).

    Per case (DSC, NSD and Time ranked; GPU and CPU tie at rank 1 for both, 0.5 + 0.5 = 1):
      C1, C2: a wins DSC and NSD, ties Time -> a (1+1+1+1)/4 = 1, b (2+2+1+1)/4 = 1.5
      C3..C5: b wins DSC and NSD            -> b 1, a 1.5
    Europe: a 1 < b 1.5 -> a rank 1; Asia: b 1 < a 1.5 -> b rank 1. Overall: a (2*1 + 3*1.5)/5 = 1.3,
    b (2*1.5 + 3*1)/5 = 1.2 -> b first.
    Team a's DSC: Europe [0.9, 0.8], Asia [0.5, 0.4, 0.3]: ranks Asia 1, 2, 3 and Europe 4, 5;
    H = 12/(5*6) * (9^2/2 + 6^2/3) - 3*6 = 0.4 * 52.5 - 18 = 3.0, p = P(chi2_1 > 3) = 0.0833;
    Mann-Whitney U(Europe) = 6 (every Europe value above every Asia one), exact two-sided p = 2/C(5,2) = 0.2;
    one pair, so Holm leaves it at 0.2."""
    a = _team("a", [0.9, 0.8, 0.5, 0.4, 0.3], [10] * 5)
    b = _team("b", [0.7, 0.6, 0.6, 0.7, 0.8], [10] * 5)
    ranking = rank([a, b], CASES, RankingSettings(bootstrap_samples=10))
    assert ranking.leaderboard.index.tolist() == ["b", "a"]
    results = cohort_results(ranking, COHORTS)
    table = results.table.set_index(["team", "cohort"])
    assert results.cohorts == ["Asia", "Europe"]
    assert table.loc[("a", "Europe"), "rank"] == 1 and table.loc[("b", "Europe"), "rank"] == 2
    assert table.loc[("b", "Asia"), "rank"] == 1 and table.loc[("a", "Asia"), "rank"] == 2
    assert table.loc[("a", "Europe"), "score"] == 1.0 and table.loc[("a", "Asia"), "score"] == 1.5
    assert table.loc[("a", "Europe"), "DSC"] == pytest.approx(0.85)
    assert table.loc[("a", "Asia"), "DSC"] == pytest.approx(0.4)
    assert table.loc[("a", "Asia"), "cases"] == 3 and table.loc[("a", "Asia"), "overall_rank"] == 2
    tests = results.tests.set_index(["team", "metric", "test"])
    kruskal = tests.loc[("a", "DSC", "kruskal")]
    assert kruskal["statistic"] == pytest.approx(3.0)
    assert kruskal["p_value"] == pytest.approx(stats.chi2.sf(3.0, 1)) and kruskal["p_value"] == pytest.approx(0.0833,
                                                                                                               abs=1e-4)
    pair = tests.loc[("a", "DSC", "mannwhitney")]
    assert {pair["cohort_a"], pair["cohort_b"]} == {"Asia", "Europe"}
    u_europe = pair["statistic"] if pair["cohort_a"] == "Europe" else 6 - pair["statistic"]
    assert u_europe == 6 and pair["p_value"] == pytest.approx(0.2) and pair["p_holm"] == pytest.approx(0.2)


def test_the_summary_per_cohort():
    table = pd.DataFrame({"Name": CASES, "DSC_mean": [0.9, 0.8, 0.5, 0.4, math.nan], "NSD_mean": [1, 1, 0, 0, 0]})
    summary = cohort_summary(table, COHORTS)
    assert summary["Europe"] == {"cases": 2, "DSC_mean": pytest.approx(0.85), "NSD_mean": 1.0}
    assert summary["Asia"]["cases"] == 3 and summary["Asia"]["DSC_mean"] == pytest.approx(0.45)  # NaN left out


@pytest.mark.parametrize(("text", "message"), [
    ("Name,cohort\nC1,Europe\nC2,Europe\nC3,Asia\nC4,Asia\n", "case C5 is not in the file"),
    ("Name,cohort\nC1,Europe\nC1,Asia\n", "case C1 is in two cohorts"),
    ("case,site\nC1,Europe\n", "header Name,cohort"),
    ("Name,cohort\nC1\n", "line 2"),
])
def test_a_bad_cohort_file_names_the_case_or_line(tmp_path, text, message):
    path = tmp_path / "cohorts.csv"
    path.write_text(text)
    with pytest.raises(CohortError) as err:
        read_cohorts(path, CASES)
    assert message in str(err.value) and path.name in str(err.value) and "\n" not in str(err.value)


def test_rows_for_other_cases_are_ignored(tmp_path):
    path = tmp_path / "cohorts.csv"
    path.write_text("Name,cohort,notes\n" + "".join(f"{c},{COHORTS[c]},x\n" for c in CASES) + "Z9,Elsewhere,\n")
    assert read_cohorts(path, CASES) == COHORTS


TEAM = textwrap.dedent("""
    import pathlib, shutil, sys
    import numpy as np
    from challenge.nifti import read_image, write_label
    gt, how, inputs, outputs = sys.argv[1:5]
    gt, inputs, outputs = pathlib.Path(gt), pathlib.Path(inputs), pathlib.Path(outputs)
    for image in inputs.glob("*_0000.nii.gz"):
        case = image.name[: -len("_0000.nii.gz")]
        labels, grid = read_image(gt / f"{case}.nii.gz")
        if how == "halfblind" and case.endswith(("1", "3")):
            labels = np.zeros_like(labels)
        write_label(labels, grid, outputs / f"{case}.nii.gz")
""")


def test_organizer_challenge_with_cohorts(tmp_path, capsys):
    data = team_data(tmp_path / "data", TEAM, seed=2, count=4)
    cases = sorted(p.name[: -len(".nii.gz")] for p in (data / "labels").glob("*.nii.gz"))
    cohorts = tmp_path / "cohorts.csv"
    cohorts.write_text("Name,cohort\n" + "".join(f"{c},{'odd' if c.endswith(('1', '3')) else 'even'}\n"
                                                 for c in cases))

    def local(how):
        return f"{how}={sys.executable} {data / 'team.py'} {data / 'labels'} {how} {{inputs}} {{outputs}}"

    base = ["challenge", "--local", local("perfect"), "--local", local("halfblind"), "--images", str(data / "images"),
            "--labels", str(data / "labels"), "--gpu", "none", "--bootstrap", "50", "--workers", "1", "-q"]
    assert challenge_main([*base, "--out", str(tmp_path / "out"), "--cohorts", str(cohorts)]) == 0
    board = tmp_path / "out" / "leaderboard"
    table = pd.read_csv(board / "cohorts.csv").set_index(["team", "cohort"])
    # An empty prediction scores 1 on the organs its GT lacks: 1/13 when the GT has 12 of the 13.
    assert table.loc[("halfblind", "even"), "DSC"] == 1.0 and table.loc[("halfblind", "odd"), "DSC"] < 0.1
    assert table.loc[("halfblind", "odd"), "rank"] == 2 and table.loc[("perfect", "odd"), "rank"] == 1
    assert table.loc[("perfect", "odd"), "overall_rank"] == 1
    assert set(pd.read_csv(board / "cohort_tests.csv")["test"]) == {"kruskal", "mannwhitney"}
    assert json.loads((board / "leaderboard.json").read_text())["cohorts"]
    page = (board / "index.html").read_text()
    assert 'id="cohorts"' in page and "Kruskal" in page
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["profile"]["name"] == "flare22"
    # evaluator score --cohorts: the summary per cohort.
    outputs = tmp_path / "out/results/halfblind/outputs"
    assert evaluate_main(["score", "--gt", str(data / "labels"), "--pred", str(outputs),
                          "--out", str(tmp_path / "scored"), "--cohorts", str(cohorts), "--workers", "1", "-q"]) == 0
    summary = json.loads((tmp_path / "scored" / "summary.json").read_text())
    assert summary["cohorts"]["even"] == {"cases": 2, "DSC_mean": 1.0, "NSD_mean": 1.0}
    assert summary["cohorts"]["odd"]["cases"] == 2 and summary["cohorts"]["odd"]["DSC_mean"] < 0.1
    # A cohort file that misses a case: one line naming it, exit 2, before any team runs.
    cohorts.write_text("Name,cohort\n" + "".join(f"{c},x\n" for c in cases[1:]))
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        challenge_main([*base, "--out", str(tmp_path / "out2"), "--cohorts", str(cohorts)])
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(err) == 1 and f"case {cases[0]} is not in the file" in err[0]
    assert not (tmp_path / "out2" / "results").exists()
