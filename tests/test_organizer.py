"""The organizer's whole chain: teams -> monitored runs -> scores -> ranking -> report, with teams
that really differ (perfect, degraded, crashing, not loadable)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from organizer.cli import main as challenge_main
from tests.conftest import DOCKER_CLI, docker_build, team_data

# A stand-in team that "predicts" by reading the GT (perfect) or an eroded copy of it (degraded).
TEAM = textwrap.dedent("""
    import pathlib, sys
    import numpy as np
    from scipy import ndimage
    from challenge.nifti import read_image, write_label
    gt, how = pathlib.Path(sys.argv[1]), sys.argv[2]
    inputs, outputs = pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
    for image in inputs.glob("*_0000.nii.gz"):
        case = image.name[: -len("_0000.nii.gz")]
        labels, grid = read_image(gt / f"{case}.nii.gz")
        if how == "eroded":
            keep = ndimage.binary_erosion(labels > 0, iterations=1)
            labels = np.where(keep, labels, 0)
        write_label(labels, grid, outputs / f"{case}.nii.gz")
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return team_data(tmp_path_factory.mktemp("challenge"), TEAM, seed=11, shape=(48, 48, 20))


def _local(data, how):
    return f"{how}={sys.executable} {data / 'team.py'} {data / 'labels'} {how} {{inputs}} {{outputs}}"


def test_local_teams_are_ranked_by_accuracy(data, tmp_path):
    argv = ["challenge", "--local", _local(data, "eroded"), "--local", _local(data, "perfect"),
            "--images", str(data / "images"), "--labels", str(data / "labels"), "--out", str(tmp_path),
            "--gpu", "none", "--bootstrap", "200", "--workers", "1"]
    assert challenge_main(argv) == 0
    board = pd.read_csv(tmp_path / "leaderboard/leaderboard.csv")
    assert board["team"].tolist()[0] == "perfect"
    perfect = board.set_index("team").loc["perfect"]
    assert perfect["DSC"] == 1.0 and perfect["NSD"] == 1.0 and perfect["failed_cases"] == 0
    assert board.set_index("team").loc["eroded", "DSC"] < 0.95
    metrics = pd.read_csv(tmp_path / "results/perfect/metrics.csv")
    assert metrics["status"].tolist() == ["ok"] * 3  # scored by the chain: metrics.csv was missing
    page = (tmp_path / "leaderboard/index.html").read_text()
    assert "perfect" in page and "eroded" in page


@pytest.mark.docker
def test_broken_archives_rank_last_and_the_run_goes_on(docker_client, base_image, data, tmp_path):
    teams = tmp_path / "teams"
    teams.mkdir()
    (teams / "junk.tar.gz").write_bytes(b"not a docker archive")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "predict.sh").write_text("echo crash >&2\nexit 1\n")
    (context / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nWORKDIR /workspace\nCOPY predict.sh .\n")
    docker_build(context, "crashy:latest", BASE_IMAGE=base_image)
    try:
        subprocess.run(f"{DOCKER_CLI} save crashy:latest | gzip -1 > {teams / 'crashy.tar.gz'}", shell=True, check=True)
        argv = ["challenge", "--teams", str(teams), "--local", _local(data, "perfect"),
                "--images", str(data / "images"), "--labels", str(data / "labels"), "--out", str(tmp_path / "out"),
                "--gpu", "none", "--memory", "256m", "--shm-size", "64m", "--timeout", "60", "--bootstrap", "100"]
        assert challenge_main(argv) == 1  # the leaderboard is written; penalised cases make exit code 1
    finally:
        docker_client.images.remove("crashy:latest", force=True)
    board = pd.read_csv(tmp_path / "out/leaderboard/leaderboard.csv").set_index("team")
    assert board.index[0] == "perfect"
    assert board.loc["junk", "status"].startswith("image failed to load")
    assert board.loc["crashy", "status"] == "all cases failed"
    assert board.loc["junk", "rank"] > 1 and board.loc["crashy", "rank"] > 1
    eff = pd.read_csv(tmp_path / "out/results/crashy/efficiency.csv")
    assert eff["status"].tolist() == ["error: exit code 1"] * 3
    note = json.loads((tmp_path / "out/results/junk/team_status.json").read_text())["note"]
    assert "junk.tar.gz: not a docker image archive" in note


def test_bad_arguments_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "organizer", "challenge", "--images", str(tmp_path), "--labels",
                           str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 2 and "give --teams" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("flag, value, message", [
    ("--timeout", "-5", "must be > 0"), ("--memory", "lots", "not a size"), ("--bootstrap", "0", "must be >= 1"),
    ("--gpu", "first", "expected a GPU index"), ("--max-output-mib", "0", "a size in MiB must be"),
])
def test_the_organizer_validates_run_options_as_the_monitor_does(data, tmp_path, flag, value, message):
    argv = ["challenge", "--local", _local(data, "perfect"), "--images", str(data / "images"), "--labels",
            str(data / "labels"), "--out", str(tmp_path / "o"), flag, value]
    with pytest.raises(SystemExit) as exc:
        challenge_main(argv)
    assert exc.value.code == 2 and not (tmp_path / "o").exists()
    monitor = subprocess.run([sys.executable, "-m", "resource_monitor", "run", "--command", "true",
                              "--images", str(data / "images"), "--results", str(tmp_path / "r"), flag, value],
                             capture_output=True, text=True, timeout=60)
    if flag != "--bootstrap":  # a ranking option: the monitor has none
        assert monitor.returncode == 2 and message in monitor.stderr
