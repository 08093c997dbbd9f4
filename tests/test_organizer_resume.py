"""The organizer's path through faults: a challenge interrupted mid-run is finished by --resume with no case
run twice and no file mixing runs; an output folder holding a run is refused without --resume or --fresh;
a team whose run shared the host with other load is flagged. Local mode: real processes and files."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import team_data

# A team that copies the ground truth after a short wait: slow enough to be interrupted between cases.
TEAM = textwrap.dedent("""
    import pathlib, shutil, sys, time
    labels, inputs, outputs = (pathlib.Path(a) for a in sys.argv[1:4])
    time.sleep(1.5)
    for image in inputs.glob("*_0000.nii.gz"):
        case = image.name[: -len("_0000.nii.gz")]
        shutil.copy(labels / f"{case}.nii.gz", outputs / f"{case}.nii.gz")
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return team_data(tmp_path_factory.mktemp("resume"), TEAM, seed=13)


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    local = [a for name in ("alpha", "beta") for a in
             ("--local", f"{name}={sys.executable} {data / 'team.py'} {data / 'labels'} {{inputs}} {{outputs}}")]
    return [sys.executable, "-m", "organizer", "challenge", *local, "--images", str(data / "images"), "--labels",
            str(data / "labels"), "--out", str(out), "--gpu", "none", "--no-plots", "--bootstrap", "20",
            "--workers", "1", *extra]


def _records(out: Path) -> dict[str, dict]:
    return {f"{p.parent.parent.name}/{p.stem}": json.loads(p.read_text())
            for p in sorted((out / "results").glob("*/cases/*.json"))}


def _wait_for(path: Path, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not path.exists():
        time.sleep(0.1)
    return path.exists()


def test_an_interrupted_challenge_is_finished_by_resume_without_running_a_case_twice(data, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_argv(data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for(out / "results/alpha/cases/Phantom_0001.json", 120), "the first case never finished"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "flare-challenge: interrupted; rerun with --resume to finish"
    assert "Traceback" not in err
    before = _records(out)
    assert set(before) == {"alpha/Phantom_0001"}
    assert not (out / "leaderboard").exists()

    refused = subprocess.run(_argv(data, out), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "holds an earlier run: --resume to finish it, or --fresh" in refused.stderr

    done = subprocess.run(_argv(data, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    after = _records(out)
    assert len(after) == 6  # 2 teams x 3 cases
    assert after["alpha/Phantom_0001"]["started_utc"] == before["alpha/Phantom_0001"]["started_utc"]  # not rerun
    run = json.loads((out / "run.json").read_text())
    assert [a["status"] for a in run["attempts"]] == ["interrupted", "complete"]
    assert {r["run_id"] for r in after.values()} == {run["run_id"]}  # no file mixes runs
    for team in ("alpha", "beta"):
        team_run = json.loads((out / f"results/{team}/run.json").read_text())
        assert team_run["run_id"] == run["run_id"]
        assert len(pd.read_csv(out / f"results/{team}/efficiency.csv")) == 3
    board = pd.read_csv(out / "leaderboard/leaderboard.csv")
    assert sorted(board["team"]) == ["alpha", "beta"] and (board["failed_cases"] == 0).all()
    assert "rank" in done.stdout and "alpha" in done.stdout  # the summary table


def test_fresh_starts_over(data, tmp_path):
    out = tmp_path / "out"
    # One case of three: the two others are penalised as "no run", so the exit code is 1.
    assert subprocess.run(_argv(data, out, "--cases", "Phantom_0001"), capture_output=True, timeout=600).returncode == 1
    first = json.loads((out / "run.json").read_text())["run_id"]
    done = subprocess.run(_argv(data, out, "--cases", "Phantom_0002", "--fresh"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["run_id"] != first and len(run["attempts"]) == 1
    assert sorted(_records(out)) == ["alpha/Phantom_0002", "beta/Phantom_0002"]  # nothing of the first run


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _team_load(data: Path, results: Path) -> dict:
    command = f"{sys.executable} {data / 'team.py'} {data / 'labels'} {{inputs}} {{outputs}}"
    done = subprocess.run([sys.executable, "-m", "resource_monitor", "run", "--command", command, "--team", "t",
                           "--images", str(data / "images"), "--results", str(results), "--gpu", "none",
                           "--no-plots", "--cases", "Phantom_0001"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads((results / "t/run.json").read_text())["attempts"][-1]["host_load"]


def test_a_run_beside_a_cpu_burner_is_flagged_and_a_quiet_one_is_not(data, tmp_path):
    burner = multiprocessing.get_context("spawn").Process(target=_burn, args=(60,), daemon=True)
    burner.start()
    try:
        time.sleep(0.5)
        loaded = _team_load(data, tmp_path / "loaded")
    finally:
        burner.terminate()
        burner.join()
    assert loaded["busy"] and loaded["other_cores_mean"] > 0.5, loaded
    quiet = _team_load(data, tmp_path / "quiet")
    if quiet["busy"]:
        pytest.skip(f"the host is busy with other work ({quiet['other_cores_mean']:.2f} cores besides the run): "
                    "the quiet half of this test needs a quiet host")
    assert quiet["other_cores_mean"] < 0.3
