"""Challenge profiles (challenge.profile): flare22 is today's constants; flare23 against a literal port of the
official FLARE23 scorer and hand-made cases; cpu-track ranks its own metrics and runs with no GPU and a CPU
quota (local mode and a real container); bad profile files and a profile that differs from a run's are
refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from challenge import labels, rules
from challenge.nifti import Geometry, write_label
from challenge.profile import SHIPPED_DIR, ProfileError, load, shipped
from evaluator.cli import main as evaluate_main
from evaluator.ranking import RankingSettings, TeamResults, rank
from evaluator.scoring import score_case, score_folder
from resource_monitor.efficiency import flare22_figures
from resource_monitor.sampling import Series
from tests.reference_flare23 import SubmissionMissing, evaluate
from tests.test_evaluator_metrics import random_labels

GRID = Geometry(size=(20, 18, 12), spacing=(0.9, 1.1, 2.5), origin=(0.0, 0.0, 0.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
CUBE = Geometry(size=(24, 24, 48), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def test_three_profiles_ship():
    assert {"flare22", "flare23", "cpu-track"} <= set(shipped())
    for name in ("flare22", "flare23", "cpu-track"):
        profile = load(name)
        assert profile.name == name and len(profile.sha256) == 64


def test_flare22_profile_is_todays_constants():
    """The flare22 file holds exactly the constants the harness had before profiles (challenge.labels and
    challenge.rules), so every number it gives is today's."""
    p = load("flare22")
    assert p.labels == labels.ORGANS
    assert p.metric_columns() == labels.metric_columns()
    assert p.container.command == tuple(rules.CONTAINER_COMMAND) and p.container.timeout_s == rules.TIME_LIMIT_S
    assert (p.container.memory, p.container.shm_size, p.container.gpu, p.container.cpus) == ("28g", "28g", True, 0)
    e = p.efficiency
    assert (e.interval_s, e.gpu_peak, e.stable_max_fraction, e.gpu_tolerance_mib, e.cpu_denominator_bias) == (
        rules.SAMPLE_INTERVAL_S, "stable_max", rules.STABLE_MAX_FRACTION, rules.GPU_TOLERANCE_MIB,
        rules.CPU_DENOMINATOR_BIAS)
    assert {m.name: m.weight for m in p.metrics} == rules.RANK_WEIGHTS
    assert {m.name: m.higher_is_better for m in p.metrics} == rules.HIGHER_IS_BETTER
    assert {m.name: m.decimals for m in p.metrics} == rules.ROUND_DECIMALS
    assert {m.name: m.penalty for m in p.metrics} == {
        "DSC": rules.PENALTY_DSC, "NSD": rules.PENALTY_NSD, "Time": rules.PENALTY_TIME_S,
        "AUC_GPU_Time_tol2G": rules.PENALTY_AUC_GPU_TOL2G, "AUC_CPU_Time": rules.PENALTY_AUC_CPU}
    assert p.normaliser == rules.RANK_NORMALISER
    assert (p.scoring.both_empty, p.scoring.nsd_zero_below_dsc, p.scoring.decimals,
            p.scoring.missing_prediction) == (1.0, 0.0, -1, "empty")


def test_flare22_by_name_scores_as_the_default(tmp_path):
    gt, pred = random_labels(np.random.default_rng(3), GRID.shape), random_labels(np.random.default_rng(4), GRID.shape)
    write_label(gt, GRID, tmp_path / "gt" / "A.nii.gz")
    write_label(pred, GRID, tmp_path / "pred" / "A.nii.gz")
    default = score_folder(tmp_path / "gt", tmp_path / "pred", tmp_path / "one", workers=1, progress=False)
    named = score_folder(tmp_path / "gt", tmp_path / "pred", tmp_path / "two", workers=1, progress=False,
                         profile=load("flare22"))
    assert (tmp_path / "one/metrics.csv").read_bytes() == (tmp_path / "two/metrics.csv").read_bytes()
    pd.testing.assert_frame_equal(default, named, check_exact=True)
    assert json.loads((tmp_path / "one/summary.json").read_text())["profile"]["name"] == "flare22"


# --- flare23 ------------------------------------------------------------------------------------------------

def _pair(tmp_path: Path, gt: np.ndarray, pred: np.ndarray, grid: Geometry = CUBE,
          case: str = "A") -> tuple[Path, Path]:
    write_label(gt, grid, tmp_path / "ref" / f"{case}.nii.gz")
    write_label(pred, grid, tmp_path / "res" / f"{case}.nii.gz")
    return tmp_path / "ref" / f"{case}.nii.gz", tmp_path / "res" / f"{case}.nii.gz"


def test_flare23_sets_nsd_to_zero_below_dsc_0_1(tmp_path):
    """Two 20-voxel cubes of the liver 19 voxels apart along k: DSC 0.05. flare22 gives the NSD of their
    touching faces; flare23 gives 0."""
    gt, pred = np.zeros(CUBE.shape, np.uint8), np.zeros(CUBE.shape, np.uint8)
    gt[2:22, 2:22, 2:22] = 1
    pred[21:41, 2:22, 2:22] = 1
    gt_path, pred_path = _pair(tmp_path, gt, pred)
    old, new = score_case(gt_path, pred_path), score_case(gt_path, pred_path, profile=load("flare23"))
    assert old.dsc["Liver"] == pytest.approx(0.05) and old.nsd["Liver"] > 0.05
    assert new.dsc["Liver"] == 0.05 and new.nsd["Liver"] == 0.0
    assert evaluate(tmp_path / "ref", tmp_path / "res")[0]["A.nii.gz"]["Liver_NSD"] == 0.0


def test_flare23_scores_a_tumor_at_2_mm_and_leaves_it_out_of_the_organ_means(tmp_path):
    gt, pred = np.zeros(CUBE.shape, np.uint8), np.zeros(CUBE.shape, np.uint8)
    gt[10:30, 4:20, 4:20] = 1
    pred[10:30, 4:20, 4:20] = 1
    zz, yy, xx = np.mgrid[:48, :24, :24]
    gt[(zz - 36) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 25] = 14
    pred[(zz - 39) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 25] = 14  # 3 mm off: part of it beyond 2 mm
    gt_path, pred_path = _pair(tmp_path, gt, pred)
    score = score_case(gt_path, pred_path, profile=load("flare23"))
    reference = evaluate(tmp_path / "ref", tmp_path / "res")[0]["A.nii.gz"]
    assert 0 < score.nsd["Tumor"] < 1 and score.nsd["Tumor"] == reference["Tumor_NSD"]
    assert score.dsc["Tumor"] == reference["Tumor_DSC"]
    assert score.dsc_mean == 1.0 and score.nsd_mean == 1.0  # 13 organs perfect (12 absent from both): Tumor out
    row = score.row()
    assert list(row)[-3:] == ["DSC_mean", "NSD_mean", "status"] and "Tumor_DSC" in row
    # flare22 knows no label 14: it is a value outside 0..13, ignored with a warning.
    old = score_case(gt_path, pred_path)
    assert "Tumor" not in old.dsc and "outside 0..13" in old.status


def test_flare23_matches_the_official_scorer_on_random_cases(tmp_path):
    """Per case, label and overall (Organ_DSC, Organ_NSD) against the literal port of the official FLARE23
    script, on random cases with all 14 labels, shifts and noise."""
    rng = np.random.default_rng(23)
    for n in range(6):
        gt = random_labels(rng, GRID.shape, organs=14)
        pred = np.roll(gt, (int(rng.integers(-1, 2)), int(rng.integers(-2, 3)), 1), axis=(0, 1, 2))
        pred[random_labels(rng, GRID.shape, organs=14) == 14] = 14
        if n == 5:
            pred[pred == 3] = 0  # a label missed entirely
        _pair(tmp_path, gt, pred, GRID, case=f"C{n}")
    table = score_folder(tmp_path / "ref", tmp_path / "res", tmp_path / "out", workers=2, progress=False,
                         profile=load("flare23"))
    per_case, overall = evaluate(tmp_path / "ref", tmp_path / "res")
    for row in table.to_dict("records"):
        reference = per_case[f"{row['Name']}.nii.gz"]
        assert {k: row[k] for k in reference} == reference
    labels13 = [o.short for o in load("flare23").labels if o.in_mean]
    for kind in ("DSC", "NSD"):
        organ_mean = round(np.mean([round(np.mean(table[f"{s}_{kind}"]), 4) for s in labels13]), 4)
        assert organ_mean == overall[f"Organ_{kind}"]
        # The per-case organ mean over cases is the same figure up to the official rounding of each column.
        assert table[f"{kind}_mean"].mean() == pytest.approx(overall[f"Organ_{kind}"], abs=1e-3)


def test_flare23_aborts_on_a_missing_prediction_and_flare22_scores_it_empty(tmp_path, capsys):
    rng = np.random.default_rng(5)
    for case in ("A", "B"):
        write_label(random_labels(rng, GRID.shape), GRID, tmp_path / "ref" / f"{case}.nii.gz")
    write_label(random_labels(rng, GRID.shape), GRID, tmp_path / "res" / "A.nii.gz")
    with pytest.raises(SubmissionMissing):
        evaluate(tmp_path / "ref", tmp_path / "res")
    argv = ["score", "--gt", str(tmp_path / "ref"), "--pred", str(tmp_path / "res"), "--workers", "1", "-q"]
    assert evaluate_main([*argv, "--out", str(tmp_path / "o23"), "--profile", "flare23"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "B.nii.gz" in err[0] and "flare23 aborts" in err[0]
    assert not (tmp_path / "o23" / "metrics.csv").exists()  # nothing half-written
    assert evaluate_main([*argv, "--out", str(tmp_path / "o22")]) == 1
    table = pd.read_csv(tmp_path / "o22" / "metrics.csv")
    assert table.set_index("Name").loc["B", "status"] == "missing"


# --- cpu-track and the ranking ------------------------------------------------------------------------------

def _team(name: str, dsc: list[float], time_s: list[float], cpu: list[float], ram: list[float],
          gpu: list[float]) -> TeamResults:
    cases = [f"C{n}" for n in range(len(dsc))]
    metrics = pd.DataFrame({"Name": cases, "DSC_mean": dsc, "NSD_mean": dsc, "status": "ok"})
    efficiency = pd.DataFrame({"Name": cases, "Time": time_s, "AUC_GPU_Time_tol2G": gpu, "AUC_CPU_Time": cpu,
                               "AUC_RAM_Time": ram, "status": "ok"})
    return TeamResults(name, metrics, efficiency)


def test_cpu_track_ranks_on_its_own_metrics_only():
    """Two teams equal in accuracy and time: under flare22 the one with less GPU wins; under cpu-track GPU is
    not ranked and the one with less CPU and RAM wins."""
    cases = ["C0", "C1"]
    light_gpu = _team("lightgpu", [0.9, 0.9], [10, 10], [900, 900], [9e5, 9e5], [0, 0])
    light_cpu = _team("lightcpu", [0.9, 0.9], [10, 10], [100, 100], [1e5, 1e5], [5e5, 5e5])
    flare22 = rank([light_gpu, light_cpu], cases, RankingSettings(bootstrap_samples=10))
    assert flare22.leaderboard["rank"].tolist() == [1, 1]  # 0.5 r_GPU against 0.5 r_CPU: a tie
    cpu = rank([light_gpu, light_cpu], cases, RankingSettings(bootstrap_samples=10, profile=load("cpu-track")))
    assert cpu.metrics == ("DSC", "NSD", "Time", "AUC_CPU_Time", "AUC_RAM_Time")
    assert "AUC_GPU_Time_tol2G" not in cpu.values.columns and "mean_rank_AUC_RAM_Time" in cpu.leaderboard
    assert cpu.leaderboard.index.tolist() == ["lightcpu", "lightgpu"]
    assert cpu.case_scores.loc["lightcpu"].tolist() == [(1 + 1 + 1 + 0.5 + 0.5) / 4] * 2


def test_flare23_ranks_the_tumor_and_not_the_cpu():
    cases = ["C0"]
    a = _team("a", [0.9], [10], [100], [1e5], [0])
    b = _team("b", [0.9], [10], [900], [9e5], [0])
    a.metrics = a.metrics.assign(Tumor_DSC=[0.2], Tumor_NSD=[0.2])
    b.metrics = b.metrics.assign(Tumor_DSC=[0.6], Tumor_NSD=[0.6])
    board = rank([a, b], cases, RankingSettings(bootstrap_samples=10, profile=load("flare23"))).leaderboard
    assert board.index.tolist() == ["b", "a"]  # CPU is not ranked; the tumor is


# --- bad profiles, and one profile per results folder --------------------------------------------------------

BAD = {
    "unknown key": ('name = "x"\nlabels = [{ id = 1, short = "A", tolerance_mm = 1.0 }]\ncolour = 1\n', "colour"),
    "bad id": ('name = "x"\nlabels = [{ id = 16, short = "A", tolerance_mm = 1.0 }]\n', "labels[0].id"),
    "twice": ('name = "x"\nlabels = [{ id = 1, short = "A", tolerance_mm = 1.0 }, '
              '{ id = 1, short = "B", tolerance_mm = 1.0 }]\n', "labels: id"),
    "not toml": ("name = \n", "not valid TOML"),
    "negative tolerance": ('name = "x"\nlabels = [{ id = 1, short = "A", tolerance_mm = -1.0 }]\n', "tolerance_mm"),
    "bad peak": ('name = "x"\nlabels = [{ id = 1, short = "A", tolerance_mm = 1.0 }]\n[efficiency]\n'
                 'gpu_peak = "mean"\n', "gpu_peak"),
    "no labels": ('name = "x"\n', "labels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_profile_is_one_line_naming_the_file_and_key(case, tmp_path):
    text, key = BAD[case]
    path = tmp_path / f"{case.replace(' ', '_')}.toml"
    path.write_text(text + ('\n[ranking]\nnormaliser = 1.0\nmetrics = [{ name = "DSC", column = "DSC_mean", '
                            'table = "metrics", weight = 1.0, higher_is_better = true, penalty = 0.0 }]\n'
                            if "[ranking]" not in text and case != "not toml" else ""))
    with pytest.raises(ProfileError) as err:
        load(path)
    assert path.name in str(err.value) and key in str(err.value) and "\n" not in str(err.value)
    done = subprocess.run([sys.executable, "-m", "evaluator", "score", "--gt", str(tmp_path), "--pred", str(tmp_path),
                           "--out", str(tmp_path / "o"), "--profile", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and key in done.stderr


def test_an_own_profile_file_is_used_and_recorded(tmp_path):
    text = (SHIPPED_DIR / "flare22.toml").read_text()
    own = tmp_path / "mine.toml"
    own.write_text(text.replace('name = "flare22"', 'name = "mine"')
                   .replace("tolerance_mm = 5.0", "tolerance_mm = 9.0"))
    profile = load(own)
    assert profile.name == "mine" and profile.labels[0].tolerance_mm == 9.0
    write_label(random_labels(np.random.default_rng(1), GRID.shape), GRID, tmp_path / "gt" / "A.nii.gz")
    write_label(random_labels(np.random.default_rng(2), GRID.shape), GRID, tmp_path / "pred" / "A.nii.gz")
    assert evaluate_main(["score", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"),
                          "--out", str(tmp_path / "o"), "--profile", str(own), "-q"]) in (0, 1)
    summary = json.loads((tmp_path / "o/summary.json").read_text())
    assert summary["profile"] == {"name": "mine", "sha256": profile.sha256}


def _local_run(tmp_path: Path, profile: str, script: str) -> Path:
    from phantoms import PhantomConfig, write_dataset
    from resource_monitor.cli import main as monitor_main

    write_dataset(tmp_path / "data", 1, seed=3, config=PhantomConfig(shape=(24, 24, 16)))
    (tmp_path / "team.py").write_text(script)
    command = f"{sys.executable} {tmp_path / 'team.py'} {tmp_path / 'data/labels'} {{inputs}} {{outputs}}"
    code = monitor_main(["run", "--command", command, "--team", "local", "--images", str(tmp_path / "data/images"),
                         "--results", str(tmp_path / "results"), "--profile", profile, "--cpus", "1", "-q",
                         "--no-plots"])
    assert code == 0
    return tmp_path / "results" / "local"


PERFECT = """
import os, pathlib, shutil, sys
print("cores", len(os.sched_getaffinity(0)))
labels, inputs, outputs = map(pathlib.Path, sys.argv[1:])
for image in inputs.glob("*_0000.nii.gz"):
    case = image.name[: -len("_0000.nii.gz")]
    shutil.copy(labels / f"{case}.nii.gz", outputs / f"{case}.nii.gz")
"""


def test_cpu_track_local_run_has_no_gpu_and_its_cpu_quota(tmp_path, capsys):
    team = _local_run(tmp_path, "cpu-track", PERFECT)
    record = json.loads(next((team / "cases").glob("*.json")).read_text())
    assert record["params"]["cpu_cores"] and len(record["params"]["cpu_cores"]) == 1
    assert "cores 1" in (team / "cases" / f"{record['case']}.log").read_text()
    run = json.loads((team / "run.json").read_text())
    assert run["settings"]["gpu"] is None and run["settings"]["cpus"] == 1.0
    assert run["profile"]["name"] == "cpu-track" and run["settings"]["timeout_s"] == 120.0
    efficiency = pd.read_csv(team / "efficiency.csv")
    assert efficiency["GPU_Mem"].isna().all() and efficiency["AUC_RAM_Time"].notna().all()
    # Scoring or ranking that folder under another profile is refused in one line.
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        evaluate_main(["rank", "--results", str(tmp_path / "results"), "--labels", str(tmp_path / "data/labels"),
                       "--out", str(tmp_path / "board"), "--bootstrap", "10", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(err) == 1 and "profile cpu-track, not flare22" in err[0]
    assert not (tmp_path / "board" / "index.html").exists()
    code = evaluate_main(["rank", "--results", str(tmp_path / "results"), "--labels", str(tmp_path / "data/labels"),
                          "--out", str(tmp_path / "board"), "--bootstrap", "10", "-q", "--profile", "cpu-track"])
    assert code == 0
    board = pd.read_csv(tmp_path / "board/leaderboard.csv")
    assert "AUC_RAM_Time" in board.columns and "AUC_GPU_Time_tol2G" not in board.columns
    page = (tmp_path / "board/index.html").read_text()
    assert "profile cpu-track" in page and "CPU-only track" in page


def test_a_cpu_quota_beyond_the_host_is_one_line(tmp_path, capsys):
    from resource_monitor.cli import main as monitor_main

    (tmp_path / "images").mkdir()
    code = None
    with pytest.raises(SystemExit) as done:
        code = monitor_main(["run", "--command", "true", "--images", str(tmp_path / "images"), "--results",
                             str(tmp_path / "r"), "--profile", "cpu-track", "--cpus", "4096"])
    assert code is None and done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cpus 4096" in err[0]


@pytest.mark.docker
def test_cpu_track_docker_run_requests_no_gpu_and_applies_the_quota(docker_client, base_image, tmp_path):
    """A real container under cpu-track with --cpus 1: no device request, a CFS quota of one core as the
    container itself reads it (cgroup v1 or v2)."""
    from phantoms import PhantomConfig, write_dataset
    from resource_monitor.cli import main as monitor_main
    from tests.conftest import docker_build

    context = tmp_path / "ctx"
    context.mkdir()
    (context / "predict.sh").write_text(
        'echo "quota $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || '
        'echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)")"\n'
        'for f in /workspace/inputs/*_0000.nii.gz; do cp "$f" "/workspace/outputs/$(basename "$f" _0000.nii.gz)'
        '.nii.gz"; done\n')
    (context / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nWORKDIR /workspace\nCOPY predict.sh .\n")
    tag = docker_build(context, "flare-cputrack-test:latest", BASE_IMAGE=base_image)
    try:
        write_dataset(tmp_path / "data", 1, seed=4, config=PhantomConfig(shape=(24, 24, 16)))
        code = monitor_main(["run", "--image", tag, "--team", "cpu", "--images", str(tmp_path / "data/images"),
                             "--results", str(tmp_path / "results"), "--profile", "cpu-track", "--cpus", "1",
                             "--memory", "256m", "--shm-size", "64m", "-q", "--no-plots"])
        assert code == 0
        team = tmp_path / "results" / "cpu"
        record = json.loads(next((team / "cases").glob("*.json")).read_text())
        assert record["params"]["nano_cpus"] == 10**9 and "device_requests" not in record["params"]
        quota, period = (team / "cases" / f"{record['case']}.log").read_text().split("quota ")[1].split()[:2]
        assert int(quota) == int(period)  # one core's worth of CPU time per period
        assert json.loads((team / "run.json").read_text())["profile"]["name"] == "cpu-track"
    finally:
        docker_client.images.remove(tag, force=True)


def _series(gpu: list[float]) -> Series:
    n = len(gpu)
    return Series(0.1, (0.0, 0.0, 0.0), t=[0.1 * (i + 1) for i in range(n)], gpu_device_mib=list(gpu),
                  gpu_process_mib=[None] * n, cpu_times=[(0.1 * (i + 1), 0.0, 0.1 * (i + 1)) for i in range(n)],
                  ram_used_mib=[1000.0] * n, target_cpu_s=[None] * n, target_memory_mib=[None] * n)


def test_gpu_peak_is_the_stable_max_in_flare22_and_the_raw_max_in_flare23():
    """100 samples at 3000 MiB and one spike to 9000 MiB (1 %, under FLARE22's 2 % threshold)."""
    series = _series([3000.0] * 100 + [9000.0])
    old = flare22_figures(series, 10.1, False, load("flare22").efficiency)
    new = flare22_figures(series, 10.1, False, load("flare23").efficiency)
    assert old["GPU_Mem"] == 3000.0 and new["GPU_Mem"] == 9000.0
    assert old["AUC_GPU_Time_tol2G"] == new["AUC_GPU_Time_tol2G"] == round(0.1 * (100 * 952 + 6952), 2)


def test_a_timed_out_case_takes_the_profiles_penalties():
    series = _series([0.0] * 5)
    cpu = load("cpu-track")
    row = flare22_figures(series, 0.5, True, cpu.efficiency, cpu.efficiency_penalties())
    assert (row["Time"], row["AUC_CPU_Time"], row["AUC_RAM_Time"]) == (120.0, 12000.0, 1966080.0)
    flare22 = flare22_figures(series, 0.5, True)
    assert (flare22["Time"], flare22["AUC_GPU_Time_tol2G"], flare22["AUC_CPU_Time"]) == (3600.0, 29491200.0, 360000.0)
