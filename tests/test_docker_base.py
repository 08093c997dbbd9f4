"""The offline Docker set-up: an image built FROM the local base runs a real container."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.conftest import REPO, docker_build

pytestmark = pytest.mark.docker


def test_engine_script_is_idempotent(docker_client):
    # The engine answers already (the fixture checked): a second call must just say so.
    out = subprocess.run(["bash", str(REPO / "docker/engine.sh")], capture_output=True, text=True, check=True)
    assert "is answering" in out.stdout


def test_base_build_skips_when_present(base_image):
    out = subprocess.run(["bash", str(REPO / "docker/base/build.sh"), base_image],
                         capture_output=True, text=True, check=True)
    assert "already exists" in out.stdout


def test_build_from_local_base_and_run(docker_client, base_image, tmp_path):
    """No registry: `docker build` FROM the imported base works offline, and the container runs."""
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\n"
        "FROM ${BASE_IMAGE}\n"
        "WORKDIR /workspace\n"
        "RUN printf 'import sys\\nprint(\"python\", sys.version_info[:2])\\n' > hello.py\n"
        'CMD ["python3", "hello.py"]\n'
    )
    tag = f"flare-test-base-{uuid.uuid4().hex[:8]}"
    docker_build(tmp_path, tag, BASE_IMAGE=base_image)
    try:
        logs = docker_client.containers.run(tag, network_mode="none", cap_drop=["ALL"], remove=True,
                                            user="1000:1000", security_opt=["no-new-privileges"])
        assert logs.decode().strip() == "python (3, 11)"
        image = docker_client.images.get(tag)
        assert image.attrs["Config"]["WorkingDir"] == "/workspace"
    finally:
        docker_client.images.remove(tag, force=True)
