"""Tooling for host faults: a second, disposable Docker engine and a tiny image made from host binaries.

``second_engine`` (function scope: a test may kill or stop it, so no test inherits another's engine) starts
docker/test_engine.sh in a fresh temporary folder and yields a :class:`SecondEngine`:

- ``host``: its DOCKER_HOST (``unix://<basetemp>/engineN/docker.sock``); ``client``: a ``docker.DockerClient`` on it;
- ``kill()``: SIGKILL its dockerd only (the fault: the engine is gone, its socket refuses connections);
- ``stop()``: stop all it started (containerd, shims, containers), delete its netns (idempotent, also after kill);
- ``start()``: start it again on the same state (images kept) after ``stop()``;
- ``host_before``: :func:`host_network_state` taken before it started; ``start_s``: seconds ``start`` took.

It is always stopped in teardown. It is skipped with the reason where it cannot run (not root, iproute2 or
dockerd missing, ``ip netns`` not permitted, or the engine does not answer), except under CI (env ``CI`` set),
where that is a failure, as for ``docker_client`` in tests/conftest.py.

:func:`mini_image` imports an image of a few MB made from host binaries (bash, dash as sh, some coreutils and
the libraries ``ldd`` lists), with no registry and no base image, on any engine.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

TEST_ENGINE = REPO / "docker" / "test_engine.sh"
# Host binaries in the mini image: enough for predict.sh scripts that write, copy, wait and burn.
MINI_BINARIES = ("bash", "sh", "cat", "cp", "dd", "head", "ls", "mkdir", "rm", "sleep", "touch", "id", "yes", "sync")
MINI_CHANGES = ["WORKDIR /workspace", "ENV PATH=/bin", 'CMD ["/bin/bash"]']


# --- the mini image ---------------------------------------------------------------------------------------------

def _ldd(binary: str) -> list[str]:
    """The shared libraries (and dynamic loader) ``ldd`` lists for ``binary``, as the paths it names."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    return [m.group(1) for m in re.finditer(r"(?:=> )?(/\S+) \(0x[0-9a-f]+\)", out)]


@functools.lru_cache(maxsize=8)
def mini_rootfs(predict_sh: str | None = None, files: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """An uncompressed tar of a root file system made from host binaries: /bin/{MINI_BINARIES} (sh is a link to
    dash), their libraries where ``ldd`` finds them, /tmp (1777), /workspace/{inputs,outputs} (outputs 0777, for
    a non-root user), /etc/{passwd,group} with root, empty /proc /sys /dev, and /workspace/predict.sh if given."""
    buf = io.BytesIO()
    seen: set[str] = set()

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add_dir(path: str, mode: int = 0o755) -> None:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                name = "/".join(parts[:i])
                if name not in seen:
                    seen.add(name)
                    info = tarfile.TarInfo(name)
                    info.type, info.mode = tarfile.DIRTYPE, (mode if i == len(parts) else 0o755)
                    tar.addfile(info)

        def add_file(path: str, data: bytes, mode: int) -> None:
            name = path.strip("/")
            if name in seen:
                return
            add_dir(os.path.dirname(path))
            seen.add(name)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for path, mode in [("/tmp", 0o1777), ("/workspace/inputs", 0o755), ("/workspace/outputs", 0o777),
                           ("/proc", 0o555), ("/sys", 0o555), ("/dev", 0o755), ("/etc", 0o755)]:
            add_dir(path, mode)
        add_file("/etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n", 0o644)
        add_file("/etc/group", b"root:x:0:\n", 0o644)
        for name in MINI_BINARIES:
            real = os.path.realpath(f"/bin/{name}")
            if os.path.basename(real) != name:  # /bin/sh -> dash: the real file and a link, as on Debian
                add_file(f"/bin/{os.path.basename(real)}", Path(real).read_bytes(), 0o755)
                add_dir("/bin")
                seen.add(f"bin/{name}")
                info = tarfile.TarInfo(f"bin/{name}")
                info.type, info.linkname = tarfile.SYMTYPE, os.path.basename(real)
                tar.addfile(info)
            else:
                add_file(f"/bin/{name}", Path(real).read_bytes(), 0o755)
            for lib in _ldd(real):
                add_file(lib, Path(os.path.realpath(lib)).read_bytes(), 0o755)
        if predict_sh is not None:
            add_file("/workspace/predict.sh", predict_sh.encode(), 0o755)
        for path, data in files:
            add_file(path, data, 0o644)
    return buf.getvalue()


def mini_image(client, tag: str, predict_sh: str | None = None, files: dict[str, bytes] | None = None) -> str:
    """Import :func:`mini_rootfs` as ``tag`` (``repo[:tag]``) into the engine of ``client`` (no registry, no base
    image) with WorkingDir /workspace and PATH=/bin, so the FLARE command ``/bin/bash -c "sh predict.sh"`` runs
    ``predict_sh``; ``files`` (absolute path -> bytes) are baked in too. Returns ``tag``."""
    from docker.utils import parse_repository_tag

    repository, version = parse_repository_tag(tag)
    rootfs = mini_rootfs(predict_sh, tuple(sorted((files or {}).items())))
    reply = client.api.import_image_from_data(rootfs, repository=repository,
                                              tag=version or "latest", changes=MINI_CHANGES)
    for line in str(reply).splitlines():
        if line.strip() and "error" in json.loads(line):
            raise RuntimeError(f"importing {tag}: {line}")
    return tag


# --- host state that a second engine must not change -------------------------------------------------------------

def host_network_state() -> dict:
    """The host's links (veth* left out: the main engine's containers come and go) by index, name, type and
    address; its routes (flags such as linkdown left out); ``iptables-save`` without counters or comments; and the
    main engine's networks (None where it does not answer)."""
    links = [(link["ifindex"], link["ifname"], link.get("link_type"), link.get("address"))
             for link in json.loads(subprocess.run(["ip", "-j", "link"], check=True, capture_output=True).stdout)
             if not link["ifname"].startswith("veth")]
    routes = sorted((r.get("dst"), r.get("dev"), r.get("gateway"), r.get("protocol"), r.get("scope"), r.get("prefsrc"))
                    for r in json.loads(subprocess.run(["ip", "-j", "route"], check=True, capture_output=True).stdout))
    iptables = None
    if shutil.which("iptables-save"):
        out = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        iptables = [re.sub(r"\[\d+:\d+\]", "", line) for line in out.splitlines() if not line.startswith("#")]
    networks = None
    try:
        import docker

        main = docker.from_env(timeout=10)
        networks = sorted((n.id, n.name, n.attrs["Driver"]) for n in main.networks.list())
        main.close()
    except Exception:  # noqa: BLE001 - no main engine: nothing of it to compare
        pass
    return {"links": links, "routes": routes, "iptables": iptables, "networks": networks}


# --- the second engine -------------------------------------------------------------------------------------------

def _engine_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(TEST_ENGINE), *args], capture_output=True, text=True, timeout=timeout)


def _skip_or_fail(problem: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{problem}: CI must be able to start a second engine (docker/test_engine.sh)")
    pytest.skip(problem)


class SecondEngine:
    """A disposable dockerd with all its state in ``root`` (docker/test_engine.sh); see the module docstring."""

    def __init__(self, root: Path):
        self.root = root
        self.host = f"unix://{root}/docker.sock"
        self.client = None
        self.host_before: dict = {}
        self.start_s = 0.0

    def start(self) -> None:
        import docker

        self.host_before = self.host_before or host_network_state()
        t0 = time.monotonic()
        run = _engine_script("start", str(self.root))
        self.start_s = time.monotonic() - t0
        if run.returncode != 0:
            _skip_or_fail(f"the second Docker engine did not start: {run.stderr.strip()[-600:]}")
        assert run.stdout.strip() == self.host, run.stdout
        self.client = docker.DockerClient(base_url=self.host, timeout=60)

    def kill(self) -> None:
        run = _engine_script("kill", str(self.root))
        assert run.returncode == 0, run.stderr

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        run = _engine_script("stop", str(self.root))
        assert run.returncode == 0, run.stderr


@pytest.fixture
def second_engine(tmp_path_factory) -> Iterator[SecondEngine]:
    """A second Docker engine of this test's own (function scope), stopped in teardown whatever happened. Its
    folder is a short one of the session's temporary folder, not ``tmp_path``: containerd's socket paths under
    it may not pass 104 bytes, and pytest names ``tmp_path`` after the test."""
    check = _engine_script("check", timeout=30)
    if check.returncode != 0:
        _skip_or_fail(f"no second Docker engine here: {check.stderr.strip()}")
    engine = SecondEngine(tmp_path_factory.mktemp("engine"))
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


def wait_for(predicate, seconds: float, poll_s: float = 0.2) -> bool:
    """Whether ``predicate()`` became true within ``seconds`` (checked every ``poll_s``)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())
