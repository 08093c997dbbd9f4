"""The host-fault tooling itself: the second engine runs the FLARE command in a mini image, dies on kill() with a
connection error, and stop() leaves the host's links, routes, iptables and the main engine's networks as they were;
the mini image runs on the main engine too."""

from __future__ import annotations

import time
import uuid

import docker
import pytest
import requests

from tests.hostile.conftest import host_network_state, mini_image

pytestmark = pytest.mark.docker
FLARE_COMMAND = ["/bin/bash", "-c", "sh predict.sh"]
PREDICT = "id -u > /workspace/outputs/x\nls /workspace >> /workspace/outputs/x\n"
HARDENED = {"network_mode": "none", "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"]}


def _run_flare(client, tag, outputs):
    return client.containers.run(tag, FLARE_COMMAND, remove=True, **HARDENED,
                                 volumes={str(outputs): {"bind": "/workspace/outputs", "mode": "rw"}})


def test_second_engine_runs_flare_then_dies_and_leaves_the_host_as_it_was(second_engine, docker_client, tmp_path):
    t0 = time.monotonic()
    engine = second_engine
    assert engine.host_before["networks"] is not None
    tag = mini_image(engine.client, "flare-mini:tooling", PREDICT)
    made_s = time.monotonic() - t0
    assert engine.client.images.get(tag).attrs["Config"]["WorkingDir"] == "/workspace"
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    _run_flare(engine.client, tag, outputs)
    assert (outputs / "x").read_text().split() == ["0", "inputs", "outputs", "predict.sh"]

    # A container still running when the engine dies: its shim and process outlive dockerd until stop().
    engine.client.containers.run(tag, ["sleep", "300"], detach=True, **HARDENED)
    engine.kill()
    with pytest.raises(requests.exceptions.ConnectionError, match="Connection (refused|reset|aborted)"):
        engine.client.ping()
    with pytest.raises(docker.errors.DockerException, match="Connection (refused|reset|aborted)"):
        docker.DockerClient(base_url=engine.host)  # a new client asks for the API version first
    engine.stop()
    engine.stop()  # twice is harmless
    assert not (engine.root / "docker.sock").exists()

    after = host_network_state()
    for key in ("links", "routes", "iptables", "networks"):
        assert after[key] == engine.host_before[key], key
    print(f"\nsecond engine: start {engine.start_s:.2f} s, mini image {made_s:.2f} s, "
          f"test body {time.monotonic() - t0:.2f} s")


def test_mini_image_runs_on_the_main_engine(docker_client, tmp_path):
    tag = mini_image(docker_client, f"flare-mini-test:{uuid.uuid4().hex[:12]}", PREDICT)
    try:
        image = docker_client.images.get(tag)
        assert image.attrs["Size"] < 20_000_000
        _run_flare(docker_client, tag, tmp_path)
        assert (tmp_path / "x").read_text().split() == ["0", "inputs", "outputs", "predict.sh"]
    finally:
        docker_client.images.remove(tag, force=True)
