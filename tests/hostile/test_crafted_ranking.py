"""One crafted file must never win a challenge: two teams with the same perfect predictions, one of which
hands in, for one case, a 108-byte .nii.gz whose header declares 2048^3 voxels. Through the organizer's
whole chain (local mode: real processes, real NIfTI files, real scoring in a process pool), the crafted
case is invalid without a large allocation, takes the official worst values, and its team ranks second."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import nibabel as nib
import pandas as pd
import pytest

from phantoms import PhantomConfig, write_dataset
from tests.hostile.test_crafted_files import header_like, nifti_bytes, save

TEAM = textwrap.dedent("""
    import pathlib, shutil, sys
    labels, crafted, inputs, outputs = (pathlib.Path(a) for a in sys.argv[1:5])
    for image in inputs.glob("*_0000.nii.gz"):
        case = image.name[: -len("_0000.nii.gz")]
        source = crafted if crafted.name == f"{case}.nii.gz" else labels / f"{case}.nii.gz"
        shutil.copy(source, outputs / f"{case}.nii.gz")
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("crafted")
    write_dataset(root, 3, seed=21, config=PhantomConfig(shape=(48, 48, 20)))
    header = header_like(root / "labels" / "Phantom_0002.nii.gz", "uint8")
    header.set_data_shape((2048, 2048, 2048))
    crafted = save(root / "crafted" / "Phantom_0002.nii.gz", nifti_bytes(header, b""))
    assert crafted.stat().st_size < 200 and nib.load(crafted).shape == (2048, 2048, 2048)
    (root / "team.py").write_text(TEAM)
    return root


def _team(data, name: str, crafted: str) -> str:
    return f"{name}={sys.executable} {data / 'team.py'} {data / 'labels'} {crafted} {{inputs}} {{outputs}}"


def test_a_crafted_file_cannot_win_a_rank(data, tmp_path):
    done = subprocess.run([sys.executable, "-m", "organizer", "challenge",
                           "--local", _team(data, "crafty", str(data / "crafted" / "Phantom_0002.nii.gz")),
                           "--local", _team(data, "honest", str(data / "crafted" / "none.nii.gz")),
                           "--images", str(data / "images"), "--labels", str(data / "labels"),
                           "--out", str(tmp_path), "--gpu", "none", "--bootstrap", "50", "--workers", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr  # a penalised case: exit code 1, the leaderboard written
    board = pd.read_csv(tmp_path / "leaderboard/leaderboard.csv").set_index("team")
    assert board.index.tolist() == ["honest", "crafty"]
    assert board.loc["crafty", "failed_cases"] == 1 and board.loc["honest", "failed_cases"] == 0
    metrics = pd.read_csv(tmp_path / "results/crafty/metrics.csv").set_index("Name")
    assert metrics.loc["Phantom_0002", "status"].startswith("invalid: shape (2048, 2048, 2048)")
    ranks = pd.read_csv(tmp_path / "leaderboard/case_ranks.csv")
    figures = ["DSC", "NSD", "Time", "AUC_GPU_Time_tol2G", "AUC_CPU_Time"]
    assert not ranks[figures + [f"{f}_rank" for f in figures]].isna().any().any()  # no NaN enters a rank
    assert "penalised: crafty/Phantom_0002" in done.stderr
