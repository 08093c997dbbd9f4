"""The host's fingerprint for run.json: GPU model and driver, CPU model and logical cores, RAM, kernel,
docker versions. Every figure that cannot be read is None, never an error."""

from __future__ import annotations

import platform
from pathlib import Path

import psutil

from resource_monitor.gpu import Gpu


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def fingerprint(gpu: Gpu | None, docker_client=None) -> dict:
    info = {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "ram_total_mib": psutil.virtual_memory().total / float(1 << 20),
        "gpu": gpu.describe() if gpu else None,
        "docker": None,
    }
    if docker_client is not None:
        try:
            v = docker_client.version()
            engine = docker_client.info()
            info["docker"] = {"server": v.get("Version"), "api": v.get("ApiVersion"),
                              "cgroup_version": engine.get("CgroupVersion"),
                              "storage_driver": engine.get("Driver"),
                              # userns-remap: root in a container is not root on the host (docs/security.md)
                              "userns_remap": any("name=userns" in str(o) for o in engine.get("SecurityOptions") or [])}
        except Exception:  # noqa: BLE001 - the engine went away
            pass
    return info
