"""Shared fixtures: the Docker engine and the local base image, NVML, and small phantoms.

Docker tests are marked ``@pytest.mark.docker``. Where no engine answers they are skipped with the
reason, except under CI (env ``CI`` set), where a missing engine is a failure: CI starts one.
GPU tests are marked ``@pytest.mark.gpu`` and skip with a visible reason where NVML finds no GPU.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER_CLI = "/usr/bin/docker"
BASE_IMAGE = os.environ.get("BASE_IMAGE", "flare-base:bookworm")
REAL_DATA = Path(os.environ.get("FLARE_REAL_DATA", REPO / "tests" / "data" / "real"))


def _engine_problem() -> str | None:
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as err:  # noqa: BLE001 - any failure means "no engine"
        return f"no Docker engine answers ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return None


def docker_build(context: Path, tag: str, **build_args: str) -> str:
    """``DOCKER_BUILDKIT=1 docker build`` of ``context`` with the engine's own client; returns ``tag``."""
    args = [a for k, v in build_args.items() for a in ("--build-arg", f"{k}={v}")]
    subprocess.run([DOCKER_CLI, "build", "-q", "--network", "none", *args, "-t", tag, str(context)], check=True,
                   capture_output=True, env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"})
    return tag


@pytest.fixture(scope="session")
def docker_client():
    """A Docker SDK client for a running engine: skip (locally) or fail (CI) without one."""
    problem = _engine_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}: CI must start one with docker/engine.sh")
        pytest.skip(f"{problem}; run docker/engine.sh")
    import docker

    return docker.from_env(timeout=300)


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """The local offline base image tag, built with docker/base/build.sh if it is missing."""
    import docker

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run(["bash", str(REPO / "docker/base/build.sh"), BASE_IMAGE], check=True)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def real_ct() -> Path:
    """The real CT folder (images/, labels/, labels_alt/; tests/data/real/README.md), or skip with the reason.
    The environment variable FLARE_REAL_DATA points it elsewhere."""
    if not (REAL_DATA / "labels" / "RealTS_001.nii.gz").is_file():
        pytest.skip(f"the real CT is not in {REAL_DATA} (set FLARE_REAL_DATA)")
    return REAL_DATA


@pytest.fixture(scope="session")
def gpu_index() -> int:
    """Index of an NVIDIA GPU that NVML sees; skip with the reason where there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as err:  # noqa: BLE001 - NVML missing, no driver, no device
        pytest.skip(f"no NVIDIA GPU: NVML unavailable ({type(err).__name__})")
    if count == 0:
        pytest.skip("no NVIDIA GPU: NVML reports 0 devices")
    return 0


def team_data(root: Path, script: str, *, seed: int, count: int = 3,
              shape: tuple[int, int, int] = (32, 32, 16)) -> Path:
    """``root`` with ``count`` phantoms (``images/``, ``labels/``) and a stand-in team's ``team.py``."""
    from phantoms import PhantomConfig, write_dataset

    write_dataset(root, count, seed=seed, config=PhantomConfig(shape=shape))
    (root / "team.py").write_text(script)
    return root
