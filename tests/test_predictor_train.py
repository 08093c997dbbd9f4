"""predictor.training (python -m predictor.train): data validation names the bad file and exits 2 in both the
plain and the semi-supervised path, a tiny run exports weights the predictor loads, Ctrl-C exits 130, the
package's modules import without a cycle."""

from __future__ import annotations

import ast
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from challenge.nifti import read_image, write_label
from phantoms.generate import PhantomConfig, generate_case, write_case
from predictor.pipeline import Predictor
from predictor.training import cli
from predictor.training.config import TrainConfig
from predictor.training.data import augment_intensity, fine_data, organ_voxels, precompute, sample_patch
from predictor.training.loop import NetRun, autocast_dtype, save_torch, train_net
from predictor.training.loss import class_weights, dice_ce_loss

SMALL = PhantomConfig(shape=(64, 64, 32))


@pytest.fixture
def data(tmp_path):
    for i in range(2):
        write_case(generate_case(seed=3, index=i, config=SMALL), tmp_path)
    return tmp_path


def _config(argv):
    """The TrainConfig the command line builds from ``argv``."""
    return cli.configs(cli.parse_args(argv), argv).train


def _train(data, out, *extra):
    return subprocess.run([sys.executable, "-m", "predictor.train", "--images", str(data / "images"),
                           "--labels", str(data / "labels"), "--out", str(out), "--threads", "2", *extra],
                          capture_output=True, text=True, timeout=900)


def test_missing_label_is_named(data, tmp_path):
    (data / "labels" / "Phantom_0002.nii.gz").unlink()
    proc = _train(data, tmp_path / "run")
    assert proc.returncode == 2 and "Phantom_0002_0000.nii.gz" in proc.stderr and "Traceback" not in proc.stderr


def test_label_on_another_grid_is_named(data, tmp_path):
    path = data / "labels" / "Phantom_0001.nii.gz"
    image = sitk.ReadImage(str(path))
    image.SetSpacing([s * 1.5 for s in image.GetSpacing()])
    sitk.WriteImage(image, str(path))
    proc = _train(data, tmp_path / "run")
    assert proc.returncode == 2 and "Phantom_0001.nii.gz" in proc.stderr and "spacing" in proc.stderr


@pytest.mark.parametrize("semi", [False, True], ids=["plain", "unlabeled"])
def test_the_same_bad_label_exits_2_with_and_without_unlabeled(data, tmp_path, semi):
    """One exit-code table for both paths: one line naming the file, nothing written under --out."""
    path = data / "labels" / "Phantom_0002.nii.gz"
    labels, geo = read_image(path)
    labels[0, 0, 0] = 14
    write_label(labels, geo, path)
    out = tmp_path / "run"
    proc = _train(data, out, *(["--unlabeled", str(data / "images"), "--rounds", "1"] if semi else []))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and "0..13" in lines[0] and not out.exists()


def test_help_documents_the_shipped_command():
    proc = subprocess.run([sys.executable, "-m", "predictor.train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--seed 0" in proc.stdout and "predictor/weights" in proc.stdout
    assert not re.search(r"(?<![\w.])/(tmp|work|root)/", proc.stdout)  # no absolute host paths in the examples
    assert "-q, --quiet" in proc.stdout and "-v, --verbose" in proc.stdout


@pytest.mark.slow
def test_one_epoch_exports_loadable_weights(data, tmp_path):
    proc = _train(data, tmp_path / "run", "--epochs", "1", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    model = Predictor.load(tmp_path / "run" / "weights", device="cpu")
    image, geo = read_image(data / "images" / "Phantom_0001_0000.nii.gz")
    labels, _ = model.predict(image, geo.spacing_kji, geo.direction)
    assert labels.shape == image.shape and labels.dtype == np.uint8 and labels.max() <= 13
    assert (tmp_path / "run" / "train_log.csv").read_text().count("\n") >= 3
    assert not [p.name for p in (tmp_path / "run").rglob(".*")]  # no temporary file left behind


def test_patches_are_class_balanced():
    """A 1-voxel organ beside a 20 000-voxel one is at the patch centre about half the time, not 1 in 20 000."""
    y = np.zeros((40, 40, 40), np.uint8)
    y[5:25, 5:35, 5:38] = 1  # "liver"
    y[35, 35, 35] = 7  # "adrenal"
    x = np.zeros((1, *y.shape), np.float16)
    rng = np.random.default_rng(0)
    hits = sum(sample_patch(x, y, (8, 8, 8), 1.0, rng)[1][4, 4, 4] == 7 for _ in range(400))
    assert 150 < hits < 250


def test_organ_voxel_index_is_each_organs_voxels_and_draws_the_same_patches():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, (9, 11, 13)).astype(np.uint8)
    y[y == 3] = 0  # an absent organ has no entry
    organs = organ_voxels(y)
    assert sorted(organs) == [1, 2, 4, 5]
    for organ, voxels in organs.items():
        np.testing.assert_array_equal(voxels, np.flatnonzero(y == organ))
    x = rng.random((1, *y.shape)).astype(np.float32)
    a, b = np.random.default_rng(2), np.random.default_rng(2)
    for _ in range(20):
        pa, pb = sample_patch(x, y, (4, 12, 6), 0.8, a), sample_patch(x, y, (4, 12, 6), 0.8, b, organs=organs)
        assert all(np.array_equal(u, v) for u, v in zip(pa, pb, strict=True))


def test_patches_with_sub_voxel_labels_stay_aligned_with_their_image():
    """upsample (1, 2, 2): each image voxel's label block comes with it, also where the volume is padded."""
    index = np.arange(10 * 12 * 14).reshape(10, 12, 14)
    x = index[None].astype(np.float32)
    y = np.repeat(np.repeat(index % 13 + 1, 2, axis=1), 2, axis=2).astype(np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(50):
        px, py = sample_patch(x, y, (4, 6, 8), 0.7, rng, upsample=(1, 2, 2))
        assert px.shape == (1, 4, 6, 8) and py.shape == (4, 12, 16)
        assert np.array_equal(py[:, 1::2, ::2], (px[0].astype(int) % 13 + 1))
    px, py = sample_patch(x, y, (12, 16, 16), 0.7, rng, upsample=(1, 2, 2))
    assert py.shape == (12, 32, 32) and (py[10:] == 0).all() and (px[0, 10:] == -1).all()
    assert (py[:, 24:] == 0).all() and (py[:, :, 28:] == 0).all() and (px[0, :, 12:] == -1).all()
    assert np.array_equal(py[:10, 0:24:2, 0:28:2], py[:10, 1:24:2, 1:28:2])  # the real part: 2 x 2 blocks


def test_loss_is_the_same_in_the_sub_voxel_layout():
    from predictor.network import depth_to_space, space_to_depth

    torch.manual_seed(0)
    blocks = torch.randn(2, 4, 4, 3, 5, 6, dtype=torch.float64)  # (N, C, fz*fy*fx, D, H, W), upsample 1 2 2
    target = torch.randint(0, 4, (2, 3, 10, 12))
    shuffled = dice_ce_loss(depth_to_space(blocks, (1, 2, 2)), target)
    assert torch.allclose(dice_ce_loss(blocks, space_to_depth(target, (1, 2, 2))), shuffled, atol=1e-12)


def test_intensity_augmentation_varies_and_stays_in_the_input_range():
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 4096, dtype=np.float32).reshape(16, 16, 16)
    outs = [augment_intensity(x.copy(), rng) for _ in range(50)]
    assert all(o.dtype == np.float32 and o.min() >= -1 and o.max() <= 1 for o in outs)
    assert np.std([o.mean() for o in outs]) > 0.05  # brightness really changes from patch to patch


def test_warm_start_begins_from_the_given_weights(tmp_path):
    """With a zero learning rate, a network started from ``init`` keeps exactly those convolution weights."""
    from predictor.network import UNet3D, UNetConfig
    from predictor.training.config import NetTraining

    unet = UNetConfig(classes=2, base=4, levels=2)
    torch.manual_seed(1)
    start = UNet3D(unet)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in start.state_dict().items()},
               tmp_path / "net.pt")
    rng = np.random.default_rng(0)
    y = np.zeros((16, 16, 16), np.uint8)
    y[4:10, 4:10, 4:10] = 1
    data = [(np.zeros((1, 16, 16, 16), np.float16), y)]
    spec = NetTraining(unet, (8, 8, 8), 1, 1, lr=0.0)
    net = train_net(NetRun("coarse", data, spec, 1, init=tmp_path / "net.pt"), rng, torch.device("cpu"), log_rows=[])
    head = "head.weight"
    assert torch.equal(net.state_dict()[head].cpu(), start.state_dict()[head].half().float())
    cold = train_net(NetRun("coarse", data, spec, 1), rng, torch.device("cpu"), log_rows=[])
    assert not torch.equal(cold.state_dict()[head], net.state_dict()[head])


def test_class_weights_favour_rare_organs_and_leave_background_at_one():
    """Counts 1000 / 10 / 100 voxels: median 100, so the 10-voxel organ gets sqrt(10); the common ones 1."""
    y = np.zeros(2000, np.uint8)
    y[:1000], y[1000:1010], y[1010:1110] = 1, 2, 3
    w = class_weights([y], 5, 0.5).numpy()
    assert np.allclose(w, [1, 1, np.sqrt(10), 1, 1], atol=1e-6)  # class 4 absent: 1
    assert class_weights([y], 5, 0.0) is None
    y = np.repeat(np.arange(5, dtype=np.uint8), [500, 1000, 100, 100, 1])  # median organ count 100
    assert np.allclose(class_weights([y], 5, 0.5).numpy(), [1, 1, 1, 1, 8], atol=1e-6)  # sqrt(100) clipped


def test_weighted_loss_counts_a_missed_rare_voxel_more():
    logits = torch.zeros(1, 3, 2, 2, 2)
    logits[:, 0] = 4.0  # everything predicted background
    target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    target[0, 0, 0, 0] = 2
    plain = dice_ce_loss(logits, target)
    weighted = dice_ce_loss(logits, target, torch.tensor([1.0, 1.0, 5.0]))
    assert weighted > plain  # the Dice term is the same; only the CE weight of class 2 differs


def test_loss_equals_the_textbook_one_hot_dice_plus_cross_entropy():
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 4, 6))  # class 4 absent: left out of the Dice mean
    weights = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0], dtype=torch.float64)
    prob = logits.softmax(1)
    onehot = F.one_hot(target, 5).permute(0, 4, 1, 2, 3).double()
    inter, denom = (prob * onehot).sum((0, 2, 3, 4)), (prob + onehot).sum((0, 2, 3, 4))
    dice = ((2 * inter + 1e-5) / (denom + 1e-5))[1:4]
    expected = F.cross_entropy(logits, target, weight=weights) + 1 - dice.mean()
    got = dice_ce_loss(logits, target, weights)
    assert torch.allclose(got, expected, atol=1e-12)
    g_got, = torch.autograd.grad(got, logits)
    g_exp, = torch.autograd.grad(expected, logits)
    assert torch.allclose(g_got, g_exp, atol=1e-12)


def test_autocast_dtype_follows_device_and_precision():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(torch.device("cuda"), "auto") == torch.float16
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if native else None)


def test_ce_weight_power_reaches_the_fine_network_and_rejects_negatives(data, tmp_path):
    base = ["--images", "i", "--labels", "l", "--out", "o"]
    assert _config([*base, "--ce-weight-power", "0"]).fine.ce_weight_power == 0.0
    assert _config(base).fine.ce_weight_power == 0.5
    assert _config([*base, "--precision", "fp32"]).coarse.precision == "fp32"
    assert _config([*base, "--fine-upsample", "1", "2", "2"]).fine.unet.upsample == (1, 2, 2)
    assert _config(base).fine.unet.upsample == (1, 1, 1)
    assert _config(base) == TrainConfig()  # the defaults are the shipped configuration
    with pytest.raises(SystemExit):
        cli.parse_args([*base, "--fine-upsample", "1", "0", "2"])
    proc = _train(data, tmp_path / "run", "--ce-weight-power", "-1")
    assert proc.returncode == 2 and "--ce-weight-power" in proc.stderr


def test_scale_augmentation_precomputes_each_spacing_and_shares_case_weights(data):
    base = ["--images", "i", "--labels", "l", "--out", "o"]
    assert _config(base).fine_scale_aug == (1.0,)
    cfg = _config([*base, "--fine-scale-aug", "0.8", "1", "1.25"])
    assert cfg.fine_scale_aug == (0.8, 1.0, 1.25)
    for bad in (["3"], ["1", "1"], ["0.5", "--fine-mm", "0.6"]):
        with pytest.raises(SystemExit):
            cli.parse_args([*base, "--fine-scale-aug", *bad])
    image, label = data / "images" / "Phantom_0001_0000.nii.gz", data / "labels" / "Phantom_0001.nii.gz"
    case = precompute("Phantom_0001", image, label, cfg)
    plain = precompute("Phantom_0001", image, label, TrainConfig())
    assert len(case.fine) == 3 and len(plain.fine) == 1
    sizes = [np.array(x.shape[1:]) for x, _ in case.fine]
    # finer spacing, more voxels: 0.8 x 2 mm has 1.25 times the voxels per axis of 2 mm
    assert np.all(sizes[0] > sizes[1]) and np.all(sizes[1] > sizes[2])
    assert np.abs(sizes[0] / sizes[1] - 1.25).max() < 0.1
    np.testing.assert_array_equal(case.fine[1][0], plain.fine[0][0])  # the factor-1 arrays are the plain ones
    for x, y in case.fine:
        assert x.shape[0] == 4 and y.shape == x.shape[1:]
        assert set(np.unique(y)) == set(np.unique(plain.fine[0][1]))  # every organ survives each scale
    pairs, weights = fine_data([case, plain], np.array([0.4, 0.6]))
    assert len(pairs) == 4
    np.testing.assert_allclose(weights, [0.4 / 3] * 3 + [0.6])
    assert fine_data([case, plain])[1] is None


def test_interrupted_plain_run_exits_130_saying_it_does_not_resume(data, tmp_path):
    """Ctrl-C (SIGINT after the first log line): one line, exit 130, nothing under --out."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "predictor.train", "--images", str(data / "images"), "--labels",
                             str(data / "labels"), "--out", str(out), "--threads", "2", "--epochs", "3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, first + rest
    last = rest.strip().splitlines()[-1]
    assert "interrupted" in last and "no resume" in last and "Traceback" not in rest
    assert not out.exists()


@pytest.mark.parametrize("verbose", [False, True])
def test_an_unexpected_error_exits_1_with_one_line(data, tmp_path, monkeypatch, capsys, verbose):
    """A failed run (here a RuntimeError from the training library): exit 1, one line, the traceback only
    with -v."""
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory\ndetails")

    monkeypatch.setattr(cli, "train", fail)
    argv = ["--images", str(data / "images"), "--labels", str(data / "labels"), "--out", str(tmp_path / "o"),
            "--device", "cpu", *(["-v"] if verbose else [])]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: training failed: RuntimeError: out of memory" in err
    assert ("Traceback" in err) == verbose and (len(err.strip().splitlines()) == 1) != verbose


def test_training_modules_import_without_a_cycle():
    """The package's own imports follow config <- data, loss <- loop <- semi <- cli (so there is no cycle),
    and each module imports on its own in a fresh interpreter."""
    import predictor.training

    layer = {"config": 0, "data": 1, "loss": 1, "loop": 2, "semi": 3, "cli": 4, "__main__": 5, "__init__": 0}
    folder = Path(predictor.training.__file__).parent
    assert {p.stem for p in folder.glob("*.py")} == set(layer)
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level != 1 else [
                    f"predictor.training.{node.module}" if node.module else f"predictor.training.{a.name}"
                    for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("predictor.training."):
                    dep = name.split(".")[2]
                    assert layer[dep] < layer[path.stem], f"{path.name} imports {dep}"
                assert name not in ("predictor.train", "predictor.semi"), f"{path.name} imports {name}"
    for module in ("config", "data", "loss", "loop", "semi", "cli"):
        proc = subprocess.run([sys.executable, "-c", f"import predictor.training.{module}"], capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr


def test_save_torch_writes_the_bytes_of_a_direct_save(tmp_path):
    """torch names the zip's records after the file: the atomic save must not leak its temporary name."""
    state = {"w": torch.arange(6.0).reshape(2, 3).half(), "n": torch.tensor(3)}
    (tmp_path / "direct").mkdir()
    torch.save(state, tmp_path / "direct" / "fine.pt")
    save_torch(state, tmp_path / "atomic" / "fine.pt")
    assert (tmp_path / "atomic" / "fine.pt").read_bytes() == (tmp_path / "direct" / "fine.pt").read_bytes()
    assert [p.name for p in (tmp_path / "atomic").iterdir()] == ["fine.pt"]


def test_recorded_command_keeps_arguments_as_given_but_no_path_of_the_current_folder(tmp_path):
    argv = ["--images", str(tmp_path / "d" / "images"), f"--labels={tmp_path / 'd' / 'labels'}", "--out", "runs/x",
            "--unlabeled", "/elsewhere/u", "--seed", "0", "--fine-upsample", "1", "2", "2"]
    assert cli.recorded_command(argv, cwd=tmp_path) == (
        "python -m predictor.train --images d/images --labels=d/labels --out runs/x --unlabeled /elsewhere/u "
        "--seed 0 --fine-upsample 1 2 2")
