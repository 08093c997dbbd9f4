"""Scoring on a Dask cluster: the same bytes as the local process pool, through the API and the CLI; a case
whose task fails or kills its worker becomes that case's ``error`` row while the others are scored; an
unreachable scheduler is one line and exit 2. A LocalCluster of 2 single-threaded workers on this host."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("distributed")

from challenge.cluster import ClusterError, ClusterSpec, dask_client  # noqa: E402
from challenge.exitcodes import HostFault  # noqa: E402
from challenge.labels import ORGANS  # noqa: E402
from challenge.nifti import Geometry, write_label  # noqa: E402
from evaluator.cli import main  # noqa: E402
from evaluator.leaderboard import LeaderboardSettings, rank_results  # noqa: E402
from evaluator.ranking import RankingSettings  # noqa: E402
from evaluator.scoring import check_workers, score_case, score_folder  # noqa: E402
from phantoms.generate import PhantomConfig, generate_case  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPE = (48, 48, 24)  # i, j, k
CASES = ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8")


def local_errors(gt: np.ndarray, seed: int) -> np.ndarray:
    """Per organ a one-voxel erosion, dilation or nothing, then a few 3-voxel cubes on its boundary flipped."""
    rng = np.random.default_rng(seed)
    ball = ndimage.generate_binary_structure(3, 1)
    pred = np.zeros_like(gt)
    for organ in ORGANS:
        mask = gt == organ.id
        if not mask.any():
            continue
        kind = rng.choice(["erode", "dilate", "keep"])
        if kind == "erode":
            mask = ndimage.binary_erosion(mask, ball)
        elif kind == "dilate":
            mask = ndimage.binary_dilation(mask, ball)
        edge = np.argwhere(mask & ~ndimage.binary_erosion(mask, ball))
        for _ in range(3 if len(edge) else 0):
            k, j, i = (int(c) for c in edge[rng.integers(len(edge))])
            mask[max(k - 1, 0):k + 2, max(j - 1, 0):j + 2, max(i - 1, 0):i + 2] = rng.random() < 0.5
        pred[mask & (pred == 0)] = organ.id
    return pred


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """Eight phantom cases: C1-C3 local errors, C4 on another spacing (a warning), C5 missing, C6 not a NIfTI
    (invalid), C7 empty, C8 local errors plus values outside 0..13 (a warning); an extra file in PRED_DIR."""
    root = tmp_path_factory.mktemp("cluster")
    gt_dir, pred_dir = root / "gt", root / "pred"
    for n, case in enumerate(CASES):
        phantom = generate_case(11, n, PhantomConfig(shape=SHAPE))
        gt, geometry = phantom.labels, phantom.geometry
        write_label(gt, geometry, gt_dir / f"{case}.nii.gz")
        pred = local_errors(gt, seed=n)
        if case == "C4":
            geometry = Geometry(geometry.size, tuple(s * 1.01 for s in geometry.spacing), geometry.origin,
                                geometry.direction)
        if case == "C5":
            continue
        if case == "C6":
            (pred_dir / f"{case}.nii.gz").write_text("not an image\n")
            continue
        if case == "C7":
            pred = np.zeros_like(gt)
        if case == "C8":
            pred[0, 0, :4] = 77
        write_label(pred, geometry, pred_dir / f"{case}.nii.gz")
    (pred_dir / "notes.txt").write_text("stray\n")
    return gt_dir, pred_dir


@pytest.fixture(scope="module")
def local_pool(folders, tmp_path_factory) -> Path:
    """The reference: the local process pool of 2 workers."""
    out = tmp_path_factory.mktemp("local")
    score_folder(*folders, out, workers=2, progress=False)
    return out


@pytest.fixture(scope="module")
def client():
    with dask_client(ClusterSpec(local=2)) as client:
        yield client


def same_files(a: Path, b: Path) -> None:
    for name in ("metrics.csv", "summary.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_fixture_is_varied(local_pool):
    text = (local_pool / "metrics.csv").read_text()
    for expected in (",ok\n", "ok; warning: header differs", "missing", "invalid: C6.nii.gz", "outside 0..13"):
        assert expected in text


def test_cluster_api_is_bit_identical(folders, local_pool, client, tmp_path):
    table = score_folder(*folders, tmp_path, progress=False, client=client)
    assert len(table) == len(CASES) and not table["status"].str.startswith("error").any()
    same_files(tmp_path, local_pool)


def test_cluster_cli_is_bit_identical(folders, local_pool, tmp_path):
    gt_dir, pred_dir = folders
    code = main(["score", "--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(tmp_path), "--cluster", "local:2",
                 "-q"])
    assert code == 1  # C5 missing, C6 invalid
    same_files(tmp_path, local_pool)


def test_relative_paths_reach_the_workers(folders, local_pool, client, tmp_path, monkeypatch):
    gt_dir, pred_dir = folders
    monkeypatch.chdir(gt_dir.parent)
    score_folder(Path("gt"), Path("pred"), tmp_path, progress=False, client=client)
    same_files(tmp_path, local_pool)


def failing_scorer(gt_path, pred_path, *args, **kwargs):
    """score_case, except that case C2 kills its worker process and case C3 raises."""
    name = Path(gt_path).name
    if name == "C2.nii.gz":
        os._exit(1)
    if name == "C3.nii.gz":
        raise RuntimeError("scorer broke on C3\nsecond line")
    return score_case(gt_path, pred_path, *args, **kwargs)


def test_a_dead_worker_or_a_failed_task_is_that_case_error_row(folders, local_pool, tmp_path):
    import dask
    import pandas as pd

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), dask_client(ClusterSpec(local=2)) as client:
        table = score_folder(*folders, tmp_path, progress=False, client=client, scorer=failing_scorer)
        client.wait_for_workers(2, timeout=60)  # the nannies restart the dead workers
    status = dict(zip(table["Name"], table["status"], strict=True))
    assert status["C2"].startswith("error: the Dask worker died each time it scored this case (KilledWorker")
    assert status["C3"] == "error: scorer broke on C3"
    assert table.set_index("Name").loc[["C2", "C3"], "DSC_mean"].isna().all()
    reference = pd.read_csv(local_pool / "metrics.csv").set_index("Name")
    ours = pd.read_csv(tmp_path / "metrics.csv").set_index("Name")
    others = [c for c in CASES if c not in ("C2", "C3")]
    pd.testing.assert_frame_equal(ours.loc[others], reference.loc[others], check_exact=True)


def slow_scorer(gt_path, pred_path, *args, **kwargs):
    time.sleep(1.0)
    return score_case(gt_path, pred_path, *args, **kwargs)


def free_port() -> int:
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_scheduler_lost_during_the_run_is_a_host_fault(folders, tmp_path):
    """A real scheduler and worker (`dask scheduler`, `dask worker`); the scheduler is killed mid-run."""
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": REPO}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", address.rsplit(":", 1)[1], "--no-dashboard"], **quiet)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--no-dashboard"], **quiet)
    try:
        with dask_client(ClusterSpec(scheduler=address)) as client:
            client.wait_for_workers(1, timeout=60)
            threading.Timer(3.0, scheduler.kill).start()  # the 8 cases take 8 s or more
            with pytest.raises(HostFault, match="the Dask scheduler went away while scoring"):
                score_folder(*folders, tmp_path, progress=False, client=client, scorer=slow_scorer)
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait()
    assert not (tmp_path / "metrics.csv").exists()


def test_workers_that_do_not_see_a_folder_are_refused(folders, client, tmp_path):
    gt_dir, _ = folders
    with pytest.raises(ClusterError, match=r"does not see --pred .*nowhere: the workers must see the folders"):
        check_workers(client, gt_dir, tmp_path / "nowhere")


def test_rank_scores_unscored_teams_on_the_cluster(folders, local_pool, client, tmp_path):
    gt_dir, pred_dir = folders
    shutil.copytree(pred_dir, tmp_path / "results" / "team_a" / "outputs")
    settings = LeaderboardSettings(workers=1, ranking=RankingSettings(bootstrap_samples=10))
    rank_results(tmp_path / "results", gt_dir, tmp_path / "board", settings, client=client)
    assert ((tmp_path / "results" / "team_a" / "metrics.csv").read_bytes()
            == (local_pool / "metrics.csv").read_bytes())


def test_cluster_options_parse():
    from evaluator.cli import build_parser

    for command in ("score", "rank"):
        folders = ["--gt", "g", "--pred", "p"] if command == "score" else ["--results", "r", "--labels", "l"]
        args = build_parser().parse_args([command, *folders, "--out", "o", "--cluster", "local:3"])
        assert (args.cluster, args.scheduler) == (3, None)
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, *folders, "--out", "o", "--cluster", "local:2",
                                       "--scheduler", "tcp://h:1"])
        assert exit_info.value.code == 2


def test_unreachable_scheduler_is_one_line_and_exit_2(folders, tmp_path):
    """Both commands at once (each waits the 10 s connect timeout); the wall time is reported, not asserted."""
    gt_dir, pred_dir = folders
    address = f"tcp://127.0.0.1:{free_port()}"
    (tmp_path / "results" / "team_a").mkdir(parents=True)
    commands = {"score": ["--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(tmp_path / "s")],
                "rank": ["--results", str(tmp_path / "results"), "--labels", str(gt_dir), "--out", str(tmp_path / "r")]}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    runs = {c: subprocess.Popen([sys.executable, "-m", "evaluator", c, *a, "--scheduler", address], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for c, a in commands.items()}
    for command, run in runs.items():
        out, err = run.communicate(timeout=120)  # a hang guard, not a timing assertion
        print(f"{command}: exit {run.returncode} after {time.monotonic() - start:.1f} s: {err.strip()}")
        assert run.returncode == 2
        assert out == ""
        assert err.count("\n") == 1, err
        assert err.startswith(f"flare-evaluate {command}: error: --scheduler {address}: no Dask scheduler answers")
    assert not (tmp_path / "s" / "metrics.csv").exists()
