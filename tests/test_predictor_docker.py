"""The predictor image end to end: the FLARE22 `docker container run` command on small phantoms,
with --network none, a read-only input mount and a non-root user (1000:1000)."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from challenge.nifti import read_geometry, read_image
from phantoms.generate import PhantomConfig, generate_case, write_case
from tests.conftest import DOCKER_CLI, REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]
IMAGE = os.environ.get("PREDICTOR_TEST_IMAGE", "flare-predictor:test")
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
