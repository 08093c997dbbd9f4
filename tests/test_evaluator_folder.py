"""Folder scoring and the CLI: every GT case gets a row and a status, bad predictions never stop the run,
bad arguments exit 2 with one line. Real NIfTI files throughout (small ones)."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from challenge.labels import ORGANS, metric_columns
from challenge.nifti import Geometry, write_label
from evaluator.cli import main
from evaluator.scoring import score_case, score_folder
from tests.reference_flare22 import reference_case
from tests.test_evaluator_metrics import random_labels

GRID = Geometry(size=(20, 18, 12), spacing=(0.9, 1.1, 2.5), origin=(-10.0, 5.0, 30.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def case_labels(seed: int) -> np.ndarray:
    return random_labels(np.random.default_rng(seed), GRID.shape)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """GT cases A..G; predictions: A good, B missing, C wrong shape, D truncated, E not NIfTI,
    F other spacing, G values outside 0..13; plus an extra prediction and a stray text file."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for n, case in enumerate("ABCDEFG"):
        write_label(case_labels(n), GRID, gt_dir / f"{case}.nii.gz")
    write_label(case_labels(100), GRID, pred_dir / "A.nii.gz")
    small = Geometry((20, 18, 11), GRID.spacing, GRID.origin, GRID.direction)
    write_label(case_labels(2)[:11], small, pred_dir / "C.nii.gz")
    write_label(case_labels(3), GRID, pred_dir / "D.nii.gz")
    data = (pred_dir / "D.nii.gz").read_bytes()
    (pred_dir / "D.nii.gz").write_bytes(data[: len(data) // 2])
    (pred_dir / "E.nii.gz").write_text("this is not an image\n")
    write_label(case_labels(5), Geometry(GRID.size, (0.9, 1.1, 3.0), GRID.origin, GRID.direction),
                pred_dir / "F.nii.gz")
    out_of_range = case_labels(6)
    out_of_range[0, 0, :3] = 200
    write_label(out_of_range, GRID, pred_dir / "G.nii.gz")
    write_label(case_labels(7), GRID, pred_dir / "Extra.nii.gz")
    (pred_dir / "notes.txt").write_text("hello\n")
    return gt_dir, pred_dir


def test_folder_gives_every_case_a_status(folders, tmp_path):
    gt_dir, pred_dir = folders
    table = score_folder(gt_dir, pred_dir, tmp_path / "out", workers=2, progress=False)
    assert list(table.columns) == ["Name", *metric_columns(), "DSC_mean", "NSD_mean", "status"]
    status = dict(zip(table["Name"], table["status"], strict=True))
    assert status["A"] == "ok"
    assert status["B"] == "missing"
    assert status["C"].startswith("invalid: shape (11, 18, 20) != GT shape (12, 18, 20)")
    assert status["D"].startswith("invalid: D.nii.gz: ")
    assert status["E"].startswith("invalid: E.nii.gz: ")
    assert status["F"].startswith("ok; warning: header differs from the GT (spacing")
    assert status["G"].startswith("ok; warning: 3 voxels with values outside 0..13")
    for case in "BCDE":  # scored like a missing prediction: 0 where the GT has the organ, 1 elsewhere
        gt = case_labels("ABCDEFG".index(case))
        row = table.set_index("Name").loc[case]
        for organ in ORGANS:
            expected = 0.0 if (gt == organ.id).any() else 1.0
            assert row[f"{organ.short}_DSC"] == row[f"{organ.short}_NSD"] == expected
    # Values at full precision, the means over the 13 organs.
    written = pd.read_csv(tmp_path / "out" / "metrics.csv")
    pd.testing.assert_frame_equal(written, table, check_exact=True)
    row = table.iloc[0]
    assert row["DSC_mean"] == pytest.approx(np.mean([row[f"{o.short}_DSC"] for o in ORGANS]), abs=1e-15)


def test_folder_values_equal_the_reference(folders, tmp_path):
    gt_dir, pred_dir = folders
    table = score_folder(gt_dir, pred_dir, tmp_path / "out", workers=1, progress=False).set_index("Name")
    for case in "AFG":  # F: the official code ignores the prediction header; G: it ignores values > 13
        ref = reference_case(gt_dir / f"{case}.nii.gz", pred_dir / f"{case}.nii.gz")
        for column, value in ref.items():
            assert table.loc[case, column] == pytest.approx(value, abs=1e-12, nan_ok=True), (case, column)


def test_summary_json(folders, tmp_path):
    gt_dir, pred_dir = folders
    table = score_folder(gt_dir, pred_dir, tmp_path / "out", workers=1, progress=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mode"] == "flare22" and summary["cases"] == 7
    assert summary["status_counts"] == {"ok": 1, "warning": 2, "missing": 1, "invalid": 3, "error": 0}
    assert summary["extra_files_in_pred_dir"] == ["Extra.nii.gz", "notes.txt"]
    liver = summary["metrics"]["Liver_DSC"]
    assert liver["mean"] == pytest.approx(table["Liver_DSC"].mean())
    assert liver["median"] == pytest.approx(table["Liver_DSC"].median())
    assert liver["std"] == pytest.approx(table["Liver_DSC"].std(ddof=0))
    assert summary["NSD_mean"] == pytest.approx(table["NSD_mean"].mean())
    assert {"evaluator", "numpy", "scipy", "SimpleITK"} <= set(summary["versions"])


def test_strict_mode_makes_header_and_range_problems_invalid(folders, tmp_path):
    gt_dir, pred_dir = folders
    table = score_folder(gt_dir, pred_dir, tmp_path / "out", mode="strict", workers=1, progress=False)
    status = dict(zip(table["Name"], table["status"], strict=True))
    assert status["F"].startswith("invalid: header differs from the GT: spacing")
    assert status["G"] == "invalid: 3 voxels with values outside 0..13"
    assert status["A"] == "ok"


def test_missing_prediction_with_another_extension_is_named(tmp_path):
    write_label(case_labels(1), GRID, tmp_path / "gt" / "A.nii.gz")
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "A.nii").write_bytes(gzip.decompress((tmp_path / "gt" / "A.nii.gz").read_bytes()))
    result = score_case(tmp_path / "gt" / "A.nii.gz", tmp_path / "pred" / "A.nii.gz")
    assert result.status == "missing (found A.nii)"


def test_corrupt_and_multi_member_gzip(tmp_path):
    write_label(case_labels(1), GRID, tmp_path / "gt" / "A.nii.gz")
    data = (tmp_path / "gt" / "A.nii.gz").read_bytes()
    (tmp_path / "pred").mkdir()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "pred" / "A.nii.gz").write_bytes(bytes(flipped))
    result = score_case(tmp_path / "gt" / "A.nii.gz", tmp_path / "pred" / "A.nii.gz")
    assert result.status.startswith("invalid: A.nii.gz: corrupt gzip data"), result.status
    raw = gzip.decompress(data)  # the same image as two gzip members (what bgzip-style writers produce)
    (tmp_path / "pred" / "A.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    result = score_case(tmp_path / "gt" / "A.nii.gz", tmp_path / "pred" / "A.nii.gz")
    assert result.status == "ok" and result.dsc_mean == 1.0


def test_score_case_is_picklable_and_plain(tmp_path):
    import pickle

    write_label(case_labels(1), GRID, tmp_path / "A.nii.gz")
    result = score_case(tmp_path / "A.nii.gz", tmp_path / "A.nii.gz", mode="strict")
    assert pickle.loads(pickle.dumps(result)) == result
    assert pickle.loads(pickle.dumps(score_case)) is score_case
    assert result.status == "ok" and result.dsc_mean == 1.0 and result.nsd_mean == 1.0


def test_real_labels_equal_the_reference(real_ct):
    gt, pred = real_ct / "labels" / "RealTS_001.nii.gz", real_ct / "labels_alt" / "RealTS_001.nii.gz"
    result = score_case(gt, pred)
    ref = reference_case(gt, pred)
    for organ in ORGANS:
        assert result.dsc[organ.short] == pytest.approx(ref[f"{organ.short}_DSC"], abs=1e-12, nan_ok=True)
        assert result.nsd[organ.short] == pytest.approx(ref[f"{organ.short}_NSD"], abs=1e-12, nan_ok=True)
    assert 0.9 < result.dsc["Liver"] < 1.0  # two good labellings of one liver


def test_spacing_is_the_gt_headers_get_zooms(tmp_path):
    nib = pytest.importorskip("nibabel")
    write_label(case_labels(1), GRID, tmp_path / "A.nii.gz")
    zooms = nib.load(str(tmp_path / "A.nii.gz")).header.get_zooms()
    from challenge.nifti import read_geometry

    assert read_geometry(tmp_path / "A.nii.gz").spacing == tuple(float(z) for z in zooms)


# --- CLI ----------------------------------------------------------------------------------------------------

def test_cli_scores_every_case_and_exits_1_when_one_is_not_ok(folders, tmp_path, capsys):
    gt_dir, pred_dir = folders
    code = main(["score", "--gt", str(gt_dir), "--pred", str(pred_dir), "--out", str(tmp_path / "o"),
                 "--workers", "1"])
    assert code == 1  # the folder has missing and invalid predictions: exit code table, "a case failed"
    assert len(pd.read_csv(tmp_path / "o" / "metrics.csv")) == 7
    err = capsys.readouterr().err
    assert "scoring" in err  # the progress bar, for more than a few cases
    assert "not ok: B: missing" in err


def test_cli_exits_0_when_every_case_is_ok(tmp_path):
    for case in ("A", "B"):
        write_label(case_labels(1), GRID, tmp_path / "gt" / f"{case}.nii.gz")
        write_label(case_labels(1), GRID, tmp_path / "pred" / f"{case}.nii.gz")
    assert main(["score", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--out",
                 str(tmp_path / "o"), "--workers", "1", "-q"]) == 0


@pytest.mark.parametrize("args, message", [
    (["score", "--gt", "/no/such/dir", "--pred", ".", "--out", "o"], "--gt /no/such/dir: no such folder"),
    (["score", "--gt", "GT", "--pred", "/no/such/dir", "--out", "o"], "--pred /no/such/dir: no such folder"),
    (["score", "--gt", "EMPTY", "--pred", ".", "--out", "o"], "no <Case>.nii.gz label maps"),
    (["score", "--gt", "GT", "--pred", ".", "--out", "o", "--mode", "fast"], "invalid choice: 'fast'"),
    (["score", "--gt", "GT", "--pred", ".", "--out", "o", "--workers", "0"], "must be >= 1"),
    (["score", "--gt", "GT"], "required"),
    (["score", "--gt", "GT", "--pred", ".", "--out", "GT/A.nii.gz/o"], "--out GT/A.nii.gz/o: not writable"),
    (["frobnicate"], "invalid choice"),
    ([], "required: COMMAND"),
])
def test_cli_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "EMPTY").mkdir()
    write_label(case_labels(1), GRID, tmp_path / "GT" / "A.nii.gz")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_python_m_evaluator_help_and_run(folders, tmp_path):
    gt_dir, pred_dir = folders
    done = subprocess.run([sys.executable, "-m", "evaluator", "score", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "Examples:" in done.stdout and "strict" in done.stdout
    done = subprocess.run([sys.executable, "-m", "evaluator", "score", "--gt", str(gt_dir), "--pred", str(pred_dir),
                           "--out", str(tmp_path / "o"), "-q"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr  # the folder holds missing and invalid predictions
    table = pd.read_csv(tmp_path / "o" / "metrics.csv")
    assert not math.isnan(table["DSC_mean"].iloc[0])
