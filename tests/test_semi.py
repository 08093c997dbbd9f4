"""Semi-supervised training (predictor.training.semi via python -m predictor.train --unlabeled): RUN_DIR layout,
selection by --keep and --filter (stability, disagreement between the inference scales, uncertainty), the
labeled-only control (--labeled-share 1), the wide teacher (--teacher big --teacher-width), warm start, resume
(finished rounds skipped; an interrupted network continues from its last epoch; Ctrl-C exits 130 saying to
rerun), and bad unlabeled data stopping the run with one line naming the file."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from challenge.nifti import read_image
from phantoms.generate import PhantomConfig, generate_case, write_case
from predictor.network import UNetConfig
from predictor.pipeline import Predictor
from predictor.training import loop
from predictor.training.config import NetTraining, SemiConfig
from predictor.training.semi import Measures, case_weights, scale_measures, select, stability, trained_in_round

SMALL = PhantomConfig(shape=(64, 64, 32))


def _phantoms(folder, seed, n):
    for i in range(n):
        write_case(generate_case(seed=seed, index=i, config=SMALL), folder)
    return folder


def _train(lab, unl, out, *extra):
    cmd = [sys.executable, "-m", "predictor.train", "--images", str(lab / "images"), "--labels",
           str(lab / "labels"), "--unlabeled", str(unl / "images"), "--out", str(out), "--threads", "2",
           "--epochs", "1", "--steps-per-epoch", "2", "--seed", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("semi")
    return _phantoms(root / "lab", 3, 3), _phantoms(root / "unl", 4, 3)


@pytest.fixture(scope="module")
def resumed_run(data, tmp_path_factory):
    """--rounds 1 (rounds 0 and 1), then the same --out with --rounds 2: round 2 only is added."""
    lab, unl = data
    out = tmp_path_factory.mktemp("run") / "run"
    first = _train(lab, unl, out, "--rounds", "1", "--keep", "0.67", "--filter", "stability")
    assert first.returncode == 0, first.stderr[-2000:]
    mtimes = {k: (out / f"round_{k}" / "weights" / "fine.pt").stat().st_mtime_ns for k in (0, 1)}
    second = _train(lab, unl, out, "--rounds", "2", "--keep", "0.67", "--filter", "stability")
    assert second.returncode == 0, second.stderr[-2000:]
    return out, mtimes, second.stderr


def _selection(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_stability_is_changed_fraction_of_foreground():
    prev = np.zeros((2, 3, 4), np.uint8)
    cur = prev.copy()
    prev[0, 0, :2] = 1  # 2 voxels
    cur[0, 0, 1:3] = 1  # overlaps prev at one voxel: union 3, changed 2
    assert stability(prev, cur) == pytest.approx(2 / 3)
    assert stability(prev, prev) == 0.0
    assert stability(None, cur) is None
    assert stability(np.zeros_like(cur), np.zeros_like(cur)) == 0.0


def test_select_keeps_the_most_stable_fraction():
    scores = {f"C{i}": s for i, s in enumerate([0.5, 0.1, 0.9, 0.3, 0.2])}
    chosen = select(scores, set(), keep=0.6)
    assert sorted(c for c, (kept, _) in chosen.items() if kept) == ["C1", "C3", "C4"]
    assert select({"A": 0.1, "B": 0.2}, {"B"}, keep=1.0) == {"A": (True, "best stability"),
                                                             "B": (False, "empty pseudo-label")}
    assert select({"A": 0.3, "B": 0.2}, set(), keep=0.5, measure="disagreement") == {
        "A": (False, "worst disagreement"), "B": (True, "best disagreement")}
    assert all(kept for kept, _ in select({"A": None, "B": None}, set(), keep=0.5).values())


@pytest.mark.slow
def test_labeled_share_weights_the_labeled_scans():
    w = case_weights(2, 10, 0.5)  # 2 labeled scans get half the draws between them, 8 pseudo the rest
    assert w is not None and w.sum() == pytest.approx(1.0)
    assert w[:2] == pytest.approx([0.25, 0.25]) and w[2:] == pytest.approx([0.0625] * 8)
    assert case_weights(2, 10, 0.0) is None  # default: every scan equally likely
    assert case_weights(2, 2, 0.5) is None  # round 0: labeled only
    draws = np.random.default_rng(0).choice(10, size=4000, p=w)
    assert 0.45 < np.mean(draws < 2) < 0.55


def test_run_dir_layout_selection_and_export(resumed_run, data):
    out, _, _ = resumed_run
    for k in range(3):
        rdir = out / f"round_{k}"
        assert {p.name for p in (rdir / "weights").iterdir()} == {"config.json", "coarse.pt", "fine.pt"}
        assert (rdir / "done.json").is_file() and not (rdir / "ckpt").exists()
        if k:
            assert sorted(p.name for p in (rdir / "pseudo").iterdir()) == [
                "Phantom_0001.nii.gz", "Phantom_0002.nii.gz", "Phantom_0003.nii.gz"]
    round1 = _selection(out / "round_1" / "selection.csv")
    assert len(round1) == 3 and all(r["kept"] == "1" and r["score"] == "" for r in round1)
    round2 = _selection(out / "round_2" / "selection.csv")
    nonempty = [r for r in round2 if r["reason"] != "empty pseudo-label"]
    kept = [r for r in round2 if r["kept"] == "1"]
    expected = max(1, math.floor(0.67 * len(nonempty) + 0.5)) if nonempty else 0  # 3 non-empty -> 2 kept
    assert len(kept) == expected and len(round2) - len(kept) == 3 - expected
    if len(nonempty) == 3:
        assert max(float(r["score"]) for r in kept) <= min(float(r["score"]) for r in round2 if r["kept"] == "0")
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["arguments"]["rounds"] == 2
    assert manifest["command"].startswith("python -m predictor.train --images ")
    assert not [p.name for p in out.rglob(".*")]  # no temporary file or staging folder left behind
    assert manifest["versions"]["torch"] == torch.__version__ and set(manifest["rounds"]) == {"0", "1", "2"}
    assert (out / "curves.png").stat().st_size > 1000
    with open(out / "curves.csv", newline="") as f:
        assert {r["round"] for r in csv.DictReader(f)} == {"0", "1", "2"}
    assert (out / "weights" / "fine.pt").read_bytes() == (out / "round_2" / "weights" / "fine.pt").read_bytes()
    model = Predictor.load(out / "weights", device="cpu")
    image, geo = read_image(data[1] / "images" / "Phantom_0001_0000.nii.gz")
    labels, _ = model.predict(image, geo.spacing_kji, geo.direction)
    assert labels.shape == image.shape and labels.dtype == np.uint8 and labels.max() <= 13


@pytest.mark.slow
def test_rerun_skips_finished_rounds(resumed_run):
    out, mtimes, log = resumed_run
    for k, mtime in mtimes.items():
        assert (out / f"round_{k}" / "weights" / "fine.pt").stat().st_mtime_ns == mtime
        assert f"round {k}: done already, skipped" in log


def test_big_teacher_makes_pseudo_labels_small_model_is_exported(data, tmp_path):
    """--teacher big --teacher-width 1.5: the teacher (1.5x the base channels) is trained where a next round
    uses its pseudo-labels (round 0 of 1), the small model in every round (warm start) and exported."""
    lab, unl = data
    out = tmp_path / "run"
    proc = _train(lab, unl, out, "--rounds", "1", "--teacher", "big", "--teacher-width", "1.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    teacher = json.loads((out / "round_0" / "teacher" / "config.json").read_text())
    small = json.loads((out / "round_0" / "weights" / "config.json").read_text())
    assert teacher["fine"]["base"] == 24 == 1.5 * small["fine"]["base"]
    assert teacher["coarse"]["base"] == 12 == 1.5 * small["coarse"]["base"]
    assert not (out / "round_1" / "teacher").exists()  # no round 2 would use its pseudo-labels
    assert json.loads((out / "weights" / "config.json").read_text())["fine"] == small["fine"]
    assert len(_selection(out / "round_1" / "selection.csv")) == 3
    Predictor.load(out / "weights", device="cpu")


def test_distillation_without_warm_start_skips_the_unused_small_model(data, tmp_path):
    """FLARE22's recipe (--teacher big --no-warm-start --rounds 1): round 0 trains the teacher only, round 1
    the small student from scratch on its pseudo-labels, selected by the default filter."""
    lab, unl = data
    out = tmp_path / "run"
    proc = _train(lab, unl, out, "--rounds", "1", "--teacher", "big", "--no-warm-start", "--keep", "0.67")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "round_0" / "teacher" / "fine.pt").is_file() and not (out / "round_0" / "weights").exists()
    assert (out / "weights" / "fine.pt").read_bytes() == (out / "round_1" / "weights" / "fine.pt").read_bytes()
    rows = _selection(out / "round_1" / "selection.csv")
    assert set(rows[0]) == {"Name", "score", "kept", "reason", "stability", "disagreement", "uncertainty"}
    assert all(r["score"] == r[SemiConfig.filter] and r["stability"] == "" for r in rows)
    nonempty = [r for r in rows if r["reason"] != "empty pseudo-label"]
    kept = [r for r in rows if r["kept"] == "1"]
    assert len(kept) == (max(1, math.floor(0.67 * len(nonempty) + 0.5)) if nonempty else 0)
    if len(nonempty) == 3:  # the best-scored cases are the kept ones
        assert max(float(r["score"]) for r in kept) <= min(float(r["score"]) for r in rows if r["kept"] == "0")
    for r in rows:
        side = json.loads((out / "round_1" / "measures" / f"{r['Name']}.json").read_text())
        assert r["disagreement"] == f"{side['disagreement']:.6f}" and 0 <= side["uncertainty"] <= 1


def test_labeled_share_one_is_the_equal_steps_control(data, tmp_path):
    """--labeled-share 1: round 1 makes no pseudo-labels and trains on the labeled scans only, from round 0's
    weights (warm start, the default): the labeled-only model trained on for the same steps."""
    lab, unl = data
    out = tmp_path / "run"
    proc = _train(lab, unl, out, "--rounds", "1", "--labeled-share", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "round_1" / "pseudo").exists() and not (out / "round_1" / "selection.csv").exists()
    done = json.loads((out / "round_1" / "done.json").read_text())
    assert "pseudo_kept" not in done and done["labeled"] == 3
    before = torch.load(out / "round_0" / "weights" / "fine.pt", weights_only=False)
    after = torch.load(out / "round_1" / "weights" / "fine.pt", weights_only=False)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # trained on, not copied


def test_scale_measures_disagreement_and_uncertainty():
    certain = torch.zeros(3, 2, 2, 2)
    certain[0] = 1.0
    certain[1, 0, 0, :] = 1.0  # two voxels organ 1 ...
    certain[0, 0, 0, :] = 0.0
    other = certain.clone()
    other[:, 0, 0, 1] = torch.tensor([0.0, 0.0, 1.0])  # ... the second scale calls one of them organ 2
    disagreement, uncertainty = scale_measures([certain, other])
    assert disagreement == pytest.approx(1 / 2)  # union of organ voxels 2, one differs
    assert uncertainty == pytest.approx(1 - (1.0 + 0.5) / 2)  # mean max-probability over the organ voxels
    assert scale_measures([certain]) == (None, pytest.approx(0.0))
    assert scale_measures([certain, torch.nn.functional.interpolate(certain[None], size=(4, 4, 4))[0]])[0] == 0.0
    background = torch.zeros(3, 2, 2, 2)
    background[0] = 1.0
    assert scale_measures([background, background]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="filter"):
        Measures().get("entropy")


def test_which_models_a_round_trains():
    unl = SemiConfig(unlabeled=None, rounds=2, teacher="big", warm_start=False)  # type: ignore[arg-type]
    assert [trained_in_round("teacher", k, unl) for k in range(3)] == [True, True, False]
    assert [trained_in_round("small", k, unl) for k in range(3)] == [False, False, True]
    warm = SemiConfig(unlabeled=None, rounds=2, teacher="big")  # type: ignore[arg-type]
    assert all(trained_in_round("small", k, warm) for k in range(3))
    assert all(trained_in_round("small", k, SemiConfig(unlabeled=None, rounds=2, warm_start=False))  # type: ignore[arg-type]
               for k in range(3))


@pytest.mark.parametrize(("flag", "value"), [("--teacher-width", "0.5"), ("--filter", "entropy"),
                                             ("--labeled-share", "1.5")])
def test_semi_option_out_of_range_is_a_one_line_error(tmp_path, flag, value):
    proc = subprocess.run([sys.executable, "-m", "predictor.train", "--images", str(tmp_path), "--labels",
                           str(tmp_path), "--unlabeled", str(tmp_path), "--out", str(tmp_path / "o"),
                           flag, value], capture_output=True, text=True)
    assert proc.returncode == 2 and flag in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


def test_killed_run_continues_from_its_checkpoint(data, tmp_path):
    """A real SIGKILL once the fine network's first epoch checkpoint exists; the rerun resumes there."""
    lab, unl = data
    out = tmp_path / "run"
    args = [sys.executable, "-m", "predictor.train", "--images", str(lab / "images"), "--labels",
            str(lab / "labels"), "--unlabeled", str(unl / "images"), "--out", str(out), "--threads", "2",
            "--epochs", "8", "--steps-per-epoch", "2", "--seed", "1", "--rounds", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "round_0" / "ckpt" / "small_fine.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and ckpt.exists()
    assert not (out / "weights").exists() and not (out / "round_0" / "done.json").exists()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "coarse: resumed" in rerun.stderr and "fine: resumed" in rerun.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    Predictor.load(out / "weights", device="cpu")


def test_interrupted_network_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    """The interruption is simulated (a KeyboardInterrupt raised right after the first epoch's checkpoint
    is saved): a real Ctrl-C cannot be timed to an epoch boundary in a test. The resumed training must
    end with exactly the weights of an uninterrupted one."""
    torch.set_num_threads(1)
    spec = NetTraining(UNetConfig(classes=2, base=4, levels=2), (8, 8, 8), 1, 2)
    gen = np.random.default_rng(0)
    data = [(gen.normal(size=(1, 10, 10, 10)).astype(np.float16), (gen.random((10, 10, 10)) > 0.5).astype(np.uint8))]

    def run(ckpt):
        torch.manual_seed(0)
        return loop.train_net(loop.NetRun("n", data, spec, 3, checkpoint=ckpt), np.random.default_rng(1),
                              torch.device("cpu"), log_rows=[])

    reference = run(tmp_path / "a.pt").state_dict()
    save = loop._save_checkpoint

    def save_then_interrupt(path, state):
        save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.pt")
    assert torch.load(tmp_path / "b.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(loop, "_save_checkpoint", save)
    resumed = run(tmp_path / "b.pt").state_dict()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_interrupted_run_exits_130_and_says_to_rerun(data, tmp_path):
    """Ctrl-C (SIGINT after the first log line): exit 130, the last line says to rerun the command to resume."""
    lab, unl = data
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "predictor.train", "--images", str(lab / "images"), "--labels",
                             str(lab / "labels"), "--unlabeled", str(unl / "images"), "--out", str(out),
                             "--threads", "2", "--epochs", "8", "--steps-per-epoch", "2", "--rounds", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, first + rest
    last = rest.strip().splitlines()[-1]
    assert "interrupted: rerun the same command to resume" in last and str(out) in last
    assert "Traceback" not in rest and not (out / "weights").exists()

def test_unreadable_unlabeled_file_stops_before_training(data, tmp_path):
    lab, unl = data
    bad = tmp_path / "unl"
    _phantoms(bad, 4, 2)
    broken = bad / "images" / "Phantom_0002_0000.nii.gz"
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated download
    out = tmp_path / "run"
    proc = _train(lab, bad, out, "--rounds", "1")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(broken) in lines[0], proc.stderr
    assert not out.exists()


def test_bad_label_in_semi_mode_exits_2_naming_it(tmp_path, data):
    lab = _phantoms(tmp_path / "lab", 5, 2)
    path = lab / "labels" / "Phantom_0002.nii.gz"
    labels, geo = read_image(path)
    labels[0, 0, 0] = 14
    from challenge.nifti import write_label

    write_label(labels, geo, path)
    proc = _train(lab, data[1], tmp_path / "run")
    assert proc.returncode == 2 and str(path) in proc.stderr and "0..13" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_mixed_precision_run_on_the_gpu(gpu_index, data, tmp_path):
    """On a CUDA GPU: the semi-supervised run trains with AMP and exports weights the predictor loads."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device (a CPU build of torch?)")
    lab, unl = data
    out = tmp_path / "run"
    proc = _train(lab, unl, out, "--rounds", "1", "--device", "cuda")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["device"].startswith("cuda")
    Predictor.load(out / "weights", device="cuda")
