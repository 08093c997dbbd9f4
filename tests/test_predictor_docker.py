"""The predictor image end to end: the FLARE22 `docker container run` command on small phantoms,
with --network none, a read-only input mount and a non-root user (the image's default user flare, uid
1000, or --user 1000:1000); an outputs folder that user cannot write fails at once with one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from challenge.nifti import read_geometry, read_image
from phantoms.generate import PhantomConfig, generate_case, write_case
from tests.conftest import DOCKER_CLI, REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]
IMAGE = os.environ.get("PREDICTOR_TEST_IMAGE", "flare-predictor:test")
IMAGE_UID = 1000  # the image's default user, flare (Dockerfile)
SANDBOX = ["--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]  # as the monitor
DSC_FLOOR = 0.35  # mean over organs present; the shipped phantom weights give ~0.45-0.55 here, a broken grid < 0.1


@pytest.fixture(scope="session")
def predictor_image(docker_client, base_image) -> str:
    """Build the image once per session with the same script as `make image`."""
    subprocess.run(["bash", str(REPO / "docker/build_image.sh"), IMAGE], check=True, capture_output=True,
                   env={**os.environ, "BASE_IMAGE": base_image})
    return IMAGE


def _mean_dsc(gt: np.ndarray, pred: np.ndarray) -> float:
    scores = []
    for organ in range(1, 14):
        g, p = gt == organ, pred == organ
        if g.any():
            scores.append(2 * (g & p).sum() / (g.sum() + p.sum()))
    return float(np.mean(scores))


def test_flare_command_offline_read_only_non_root(predictor_image, tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        write_case(generate_case(seed=11, index=i, config=PhantomConfig(shape=(128, 128, 64))), data)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    outputs.chmod(0o777)  # the container's user 1000 must be able to write here
    cmd = [DOCKER_CLI, "container", "run", "--rm", "--network", "none", "--user", "1000:1000",
           "-v", f"{data / 'images'}/:/workspace/inputs/:ro", "-v", f"{outputs}/:/workspace/outputs/",
           predictor_image, "/bin/bash", "-c", "sh predict.sh"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for case in ("Phantom_0001", "Phantom_0002"):
        path = outputs / f"{case}.nii.gz"
        assert path.stat().st_mode & 0o044 == 0o044  # readable by the mount's owner and others
        assert read_geometry(path).mismatch(read_geometry(data / "images" / f"{case}_0000.nii.gz")) is None
        pred, _ = read_image(path)
        gt, _ = read_image(data / "labels" / f"{case}.nii.gz")
        assert pred.dtype == np.uint8 and pred.max() <= 13
        assert _mean_dsc(gt, pred) > DSC_FLOOR


def _flare_run(image: str, inputs: Path, outputs: Path, *options: str,
               out_mode: str = "") -> subprocess.CompletedProcess:
    """The FLARE22 command (less --gpus), sandboxed like the resource monitor, inputs mounted read-only."""
    cmd = [DOCKER_CLI, "container", "run", "--rm", *SANDBOX, *options,
           "-v", f"{inputs}/:/workspace/inputs/:ro", "-v", f"{outputs}/:/workspace/outputs/{out_mode}",
           image, "/bin/bash", "-c", "sh predict.sh"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("small")
    write_case(generate_case(seed=3, index=0, config=PhantomConfig(shape=(96, 96, 40))), data)
    return data / "images"


def test_default_user_is_not_root(predictor_image):
    inspect = subprocess.run([DOCKER_CLI, "image", "inspect", predictor_image], capture_output=True, text=True,
                             check=True)
    user = json.loads(inspect.stdout)[0]["Config"]["User"]
    assert user and user.split(":")[0] not in ("root", "0"), f"Config.User is {user!r}"
    proc = subprocess.run([DOCKER_CLI, "run", "--rm", *SANDBOX, predictor_image, "sh", "-c", "id -u; id -g"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(IMAGE_UID), str(IMAGE_UID)]


@pytest.mark.parametrize("user", [None, "1000:1000"], ids=["default-user", "user-1000"])
def test_flare_command_non_root_writable_outputs(predictor_image, small_inputs, tmp_path, user):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    outputs.chmod(0o777)  # as the monitor and the FLARE instructions make it
    proc = _flare_run(predictor_image, small_inputs, outputs, *(["--user", user] if user else []))
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(outputs.iterdir())
    assert [p.name for p in written] == ["Phantom_0001.nii.gz"]  # and no write-check probe left behind
    assert written[0].stat().st_uid == IMAGE_UID  # written by the non-root user, not by root


@pytest.mark.parametrize("unwritable", ["folder-0555", "read-only-mount"])
def test_unwritable_outputs_fail_with_one_line(predictor_image, small_inputs, tmp_path, unwritable):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    if unwritable == "folder-0555":
        outputs.chmod(0o555)  # like a root-owned 0755 host folder: uid 1000 cannot write, whoever owns it
        proc = _flare_run(predictor_image, small_inputs, outputs)
    else:
        outputs.chmod(0o777)
        proc = _flare_run(predictor_image, small_inputs, outputs, out_mode=":ro")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]  # BAD_INPUT: nothing ran, nothing was written
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "/workspace/outputs" in lines[0] and "not writable" in lines[0] and f"uid {IMAGE_UID}" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert list(outputs.iterdir()) == []
