"""The README's main command, `make demo`, end to end in its local mode (the Docker path's parts are
covered by the predictor's container test and the organizer's archive test)."""

from __future__ import annotations

import os
import subprocess

import pandas as pd
import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_demo_runs_the_whole_chain_locally(tmp_path):
    env = {**os.environ, "DEMO_LOCAL": "1", "DEMO_CASES": "2", "DEMO_SHAPE": "96 96 32"}
    done = subprocess.run(["bash", str(REPO / "docker/demo.sh"), str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    index = tmp_path / "challenge/leaderboard/index.html"
    assert f"leaderboard: {index}" in done.stdout and "local mode" in done.stdout
    board = pd.read_csv(tmp_path / "challenge/leaderboard/leaderboard.csv")
    assert sorted(board["team"]) == ["baseline", "lowres"]
    assert (board["status"] == "ok").all() and (board["DSC"] > 0).all()
