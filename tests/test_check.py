"""A team's path: `organizer check` runs an image as the organizers do and says what is wrong with each
case, with an exit code that gates CI and a JUnit report; `make submission` never ships the wrong image.
Wrong images are the few-MB mini images of tests/hostile/conftest.py (real containers, real sandbox)."""

from __future__ import annotations

import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from challenge.nifti import Geometry, read_image, write_label
from phantoms import PhantomConfig, write_dataset
from tests.conftest import REPO
from tests.hostile.conftest import mini_image

pytestmark = pytest.mark.docker
CASES = ("Phantom_0001", "Phantom_0002")
COPY_BAKED = ('for f in /workspace/inputs/*_0000.nii.gz; do f=${{f##*/}}; c=${{f%_0000.nii.gz}}; '
              'cp /opt/labels/$c.nii.gz /workspace/outputs/{out}; done\n')


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples")
    write_dataset(root, 2, seed=8, config=PhantomConfig(shape=(32, 32, 16)))
    return root


def _baked(samples: Path, transform=None) -> dict[str, bytes]:
    """The GT label maps, optionally rewritten by ``transform(labels, grid) -> (labels, grid)``, to bake in."""
    files = {}
    for case in CASES:
        labels, grid = read_image(samples / "labels" / f"{case}.nii.gz")
        if transform is not None:
            labels, grid = transform(labels, grid)
        path = samples / "baked" / f"{uuid.uuid4().hex}.nii.gz"
        write_label(labels, grid, path)
        files[f"/opt/labels/{case}.nii.gz"] = path.read_bytes()
    return files


def _coarse(labels: np.ndarray, grid: Geometry) -> tuple[np.ndarray, Geometry]:
    """Every other voxel: half the size at twice the spacing (a wrong grid)."""
    coarse = Geometry(tuple(s // 2 for s in grid.size), tuple(2 * s for s in grid.spacing), grid.origin,
                      grid.direction)
    k, j, i = (2 * n for n in coarse.shape)
    return np.ascontiguousarray(labels[:k:2, :j:2, :i:2]), coarse


def _out_of_range(labels: np.ndarray, grid: Geometry) -> tuple[np.ndarray, Geometry]:
    labels = labels.copy()
    labels[0, 0, :4] = 20
    return labels, grid


def _check(image: str, samples: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "organizer", "check", "--image", image, "--images",
                           str(samples / "images"), "--labels", str(samples / "labels"), "--out", str(tmp_path / "r"),
                           "--gpu", "none", "--memory", "256m", "--shm-size", "16m", "--timeout", "60", "--no-plots",
                           "--junit", str(tmp_path / "report.xml"), *extra],
                          capture_output=True, text=True, timeout=300)


WRONG = {  # name -> (predict.sh, transform of the baked labels or None, expected text in the verdict)
    "wrong-name": (COPY_BAKED.format(out="${c}_0000.nii.gz"), None,
                   "FAIL Phantom_0001: expected Phantom_0001.nii.gz, found Phantom_0001_0000.nii.gz"),
    "wrong-grid": (COPY_BAKED.format(out="$c.nii.gz"), _coarse,
                   "FAIL Phantom_0001: grid differs from the input's: size (16, 16, 8) != (32, 32, 16)"),
    "out-of-range": (COPY_BAKED.format(out="$c.nii.gz"), _out_of_range,
                     "FAIL Phantom_0001: label values must be integers 0..13: 4 voxels outside"),
    "writes-inputs": ("touch /workspace/inputs/scratch || exit 3\n", None,
                      "hint (read-only inputs): /workspace/inputs is read-only"),
    "needs-network": ("bash -c 'exec 3<>/dev/tcp/1.1.1.1/443' || exit 4\n", None,
                      "hint (no network): the container has no network"),
    "bash-only": ('if [[ -d /workspace ]]; then cp /opt/labels/* /workspace/outputs/; fi\n', None,
                  "hint (sh, not bash): predict.sh runs under `sh`"),
}


@pytest.mark.parametrize("kind", sorted(WRONG))
def test_the_check_names_what_is_wrong_and_exits_1(docker_client, samples, tmp_path, kind):
    script, transform, expected = WRONG[kind]
    image = mini_image(docker_client, f"flare-check-{kind}:{uuid.uuid4().hex[:8]}", script,
                       _baked(samples, transform))
    try:
        done = _check(image, samples, tmp_path)
    finally:
        docker_client.images.remove(image, force=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert expected in done.stdout, done.stdout
    assert "flare-check: 0 of 2 case(s) passed" in done.stdout
    suite = ET.parse(tmp_path / "report.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "2")
    assert [case.get("name") for case in suite.iter("testcase")] == list(CASES)


def test_a_correct_image_passes_with_exit_0(docker_client, samples, tmp_path):
    image = mini_image(docker_client, f"flare-check-good:{uuid.uuid4().hex[:8]}", COPY_BAKED.format(out="$c.nii.gz"),
                       _baked(samples))
    try:
        done = _check(image, samples, tmp_path)
    finally:
        docker_client.images.remove(image, force=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS Phantom_0001  (DSC 1.000, NSD 1.000" in done.stdout
    suite = ET.parse(tmp_path / "report.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "0")


def _submission(tmp_path: Path, team: str, image: str | None = None, force: bool = False):
    argv = ["make", "-s", "-f", str(REPO / "Makefile"), "submission", f"TEAM={team}"]
    argv += [f"IMAGE={image}"] if image else []
    argv += ["FORCE=1"] if force else []
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_make_submission_never_ships_the_wrong_image(docker_client, tmp_path):
    team = f"team{uuid.uuid4().hex[:6]}"
    first = mini_image(docker_client, f"flare-sub-a:{uuid.uuid4().hex[:8]}", "echo a\n")
    second = mini_image(docker_client, f"flare-sub-b:{uuid.uuid4().hex[:8]}", "echo b\n")
    try:
        done = _submission(tmp_path, team)
        assert done.returncode != 0 and f"no image {team}:latest" in done.stderr
        done = _submission(tmp_path, team, first)
        first_id = docker_client.images.get(first).id
        assert done.returncode == 0, done.stderr
        assert f"holding {team}:latest = image {first_id}" in done.stdout and (tmp_path / f"{team}.tar.gz").exists()
        done = _submission(tmp_path, team, second)
        assert done.returncode != 0 and "already exists and is another image" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 2  # its line, and make's own "Error 1"
        assert docker_client.images.get(f"{team}:latest").id == first_id  # not moved
        done = _submission(tmp_path, team)  # no IMAGE: the team's own tag
        assert done.returncode == 0 and first_id in done.stdout
        done = _submission(tmp_path, team, second, force=True)
        assert done.returncode == 0 and docker_client.images.get(f"{team}:latest").id == \
            docker_client.images.get(second).id
    finally:
        for tag in (first, second, f"{team}:latest"):
            docker_client.images.remove(tag, force=True)
