"""Host faults and disk floods against the monitor's Docker mode, for real: a second Docker engine of the
test's own that is killed mid-run (never the shared engine), an image removed under a run, a monitor killed
with SIGKILL, and containers that fill their output folder or their own file system. Images are the few-MB
mini images of tests/hostile/conftest.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import docker
import pytest

from phantoms import PhantomConfig, write_dataset
from resource_monitor.runners import LABEL_RUN
from tests.hostile.conftest import mini_image, wait_for

pytestmark = pytest.mark.docker

# Phantom_0001 works slowly (time to break something under it), Phantom_0002 at once.
SLOW_FIRST = """\
case=$(ls /workspace/inputs)
case=${case%_0000.nii.gz}
[ "$case" = Phantom_0001 ] && sleep 8
cp /workspace/inputs/*_0000.nii.gz /workspace/outputs/$case.nii.gz
"""
HANG = "sleep 600\n"
FILL_OUTPUTS = "while true; do dd if=/dev/zero bs=1M count=8 >> /workspace/outputs/junk 2>/dev/null; done\n"
FILL_LAYER = "while true; do dd if=/dev/zero bs=1M count=8 >> /tmp/junk 2>/dev/null; done\n"


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile-docker")
    write_dataset(root, 2, seed=4, config=PhantomConfig(shape=(24, 24, 16)))
    return root / "images"


def _argv(image: str, cases: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "resource_monitor", "run", "--image", image, "--team", "t", "--images", str(cases),
            "--results", str(results), "--gpu", "none", "--memory", "256m", "--shm-size", "16m", "--no-plots", *extra]


def _env(host: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if host:
        env["DOCKER_HOST"] = host
    return env


def _attempts(results: Path) -> list[str]:
    return [a["status"] for a in json.loads((results / "t/run.json").read_text())["attempts"]]


def _running(client) -> list:
    try:
        return client.containers.list(filters={"label": LABEL_RUN})
    except Exception:  # noqa: BLE001 - the engine may be gone
        return []


def test_the_engine_dying_mid_case_is_a_host_fault_and_resume_recovers(second_engine, cases, tmp_path):
    image = mini_image(second_engine.client, "flare-mini:slow", SLOW_FIRST)
    monitor = subprocess.Popen(_argv(image, cases, tmp_path), env=_env(second_engine.host), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: bool(_running(second_engine.client)), 60), "the case never started"
    second_engine.kill()
    _, err = monitor.communicate(timeout=60)
    assert monitor.returncode == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flare-monitor: host fault: the Docker engine"), err
    assert "rerun with --resume" in lines[0]
    assert not (tmp_path / "t/cases/Phantom_0001.json").exists()  # never the team's result
    assert _attempts(tmp_path) == ["host-fault"]
    second_engine.stop()
    second_engine.start()
    done = subprocess.run(_argv(image, cases, tmp_path, "--resume"), env=_env(second_engine.host),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    statuses = {c: json.loads((tmp_path / f"t/cases/{c}.json").read_text())["status"]
                for c in ("Phantom_0001", "Phantom_0002")}
    assert statuses == {"Phantom_0001": "ok", "Phantom_0002": "ok"}
    assert _attempts(tmp_path) == ["host-fault", "complete"]


def test_an_image_removed_under_the_run_is_a_host_fault_not_the_teams(docker_client, cases, tmp_path):
    image = mini_image(docker_client, f"flare-mini-vanish:{uuid.uuid4().hex[:8]}", SLOW_FIRST)
    image_id = docker_client.images.get(image).id
    try:
        monitor = subprocess.Popen(_argv(image, cases, tmp_path), text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        assert wait_for(lambda: any(c.labels.get(LABEL_RUN) for c in _running(docker_client)
                                     if c.image.id == image_id), 60)
        docker_client.images.remove(image, force=True)  # untagged while case 1 runs
        _, err = monitor.communicate(timeout=60)
        assert monitor.returncode == 3, err
        assert "host fault: the image" in err and "no longer in the Docker engine" in err
        assert json.loads((tmp_path / "t/cases/Phantom_0001.json").read_text())["status"] == "ok"
        assert not (tmp_path / "t/cases/Phantom_0002.json").exists()  # unfinished, not "error: 404"
        docker_client.images.get(image_id).tag(image)
        done = subprocess.run(_argv(image, cases, tmp_path, "--resume"), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads((tmp_path / "t/cases/Phantom_0002.json").read_text())["status"] == "ok"
    finally:
        for ref in (image, image_id):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(ref, force=True)


def test_a_container_outlives_its_killed_monitor_only_until_its_deadline(second_engine, cases, tmp_path):
    image = mini_image(second_engine.client, "flare-mini:hang", HANG)
    monitor = subprocess.Popen(_argv(image, cases, tmp_path, "--timeout", "4", "--cases", "Phantom_0001"),
                               env=_env(second_engine.host), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: bool(_running(second_engine.client)), 60)
    monitor.send_signal(signal.SIGKILL)
    monitor.wait()
    killed = time.monotonic()
    assert _running(second_engine.client), "the container should run on right after its monitor's death"
    assert wait_for(lambda: not second_engine.client.containers.list(all=True, filters={"label": LABEL_RUN}), 30)
    assert time.monotonic() - killed < 4 + 5 + 10  # the timeout, the watchdog's grace, its polling


@pytest.mark.parametrize("script, flag, where", [
    (FILL_OUTPUTS, "--max-output-mib", "/workspace/outputs"),
    (FILL_LAYER, "--max-layer-mib", "the container's file system"),
], ids=["outputs", "container-file-system"])
def test_a_container_filling_a_disk_is_stopped_at_once(docker_client, cases, tmp_path, script, flag, where):
    image = mini_image(docker_client, f"flare-mini-fill:{uuid.uuid4().hex[:8]}", script)
    try:
        start = time.monotonic()
        done = subprocess.run(_argv(image, cases, tmp_path, flag, "32", "--timeout", "120", "--cases",
                                    "Phantom_0001"), capture_output=True, text=True, timeout=300)
        assert time.monotonic() - start < 60  # stopped at the cap, not at the timeout
        assert done.returncode == 1, done.stderr
        record = json.loads((tmp_path / "t/cases/Phantom_0001.json").read_text())
        assert record["status"] == f"error: wrote more than 32 MiB to {where}"
    finally:
        docker_client.images.remove(image, force=True)


def test_an_image_without_bash_is_the_teams_error_not_a_host_fault(docker_client, cases, tmp_path):
    """The FLARE command is `/bin/bash -c "sh predict.sh"`: an image without bash cannot start. That is the
    image's fault (the case's `error`), and the run goes on with the next case."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("workspace")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    tag = f"flare-nobash:{uuid.uuid4().hex[:8]}"
    docker_client.api.import_image_from_data(buffer.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1])
    try:
        done = subprocess.run(_argv(tag, cases, tmp_path), capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr
        for case in ("Phantom_0001", "Phantom_0002"):
            status = json.loads((tmp_path / f"t/cases/{case}.json").read_text())["status"]
            assert status.startswith("error: the image cannot run '/bin/bash -c sh predict.sh'"), status
    finally:
        docker_client.images.remove(tag, force=True)


def test_a_read_only_root_keeps_tmp_and_outputs_writable(docker_client, cases, tmp_path):
    script = ("touch /tmp/scratch || exit 5\n"
              "if touch /workspace/scratch 2>/dev/null; then exit 6; fi\n"
              "for f in /workspace/inputs/*_0000.nii.gz; do g=${f##*/}; "
              'cp "$f" "/workspace/outputs/${g%_0000.nii.gz}.nii.gz"; done\n')
    image = mini_image(docker_client, f"flare-mini-ro:{uuid.uuid4().hex[:8]}", script)
    try:
        done = subprocess.run(_argv(image, cases, tmp_path, "--read-only-root", "--cases", "Phantom_0001"),
                              capture_output=True, text=True, timeout=300)
    finally:
        docker_client.images.remove(image, force=True)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "t/cases/Phantom_0001.json").read_text())
    assert record["status"] == "ok" and record["params"]["read_only"] is True
    assert record["params"]["tmpfs"] == {"/tmp": "rw,exec,nosuid,size=4096m"}
