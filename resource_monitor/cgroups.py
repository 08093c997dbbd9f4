"""Per-container CPU and memory from cgroup files, v1 (cpuacct, memory controllers) and v2 (unified).

A container's cgroup is found from ``/proc/<pid>/cgroup`` of its init PID. Files are read while the
container runs (the cgroup disappears at exit). ``root`` lets tests point at recorded files.
CPU usage is in seconds of CPU time (core-seconds); memory in MiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = float(1 << 20)


@dataclass(frozen=True)
class Cgroup:
    version: int  # 1 or 2
    cpu_dir: Path  # v1: the cpuacct directory; v2: the unified directory
    memory_dir: Path
    procs_dir: Path  # where cgroup.procs lists the member PIDs

    def cpu_seconds(self) -> float:
        if self.version == 1:
            return int((self.cpu_dir / "cpuacct.usage").read_text()) / 1e9
        for line in (self.cpu_dir / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise ValueError(f"{self.cpu_dir}/cpu.stat: no usage_usec")

    def memory_mib(self) -> float:
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        return int((self.memory_dir / name).read_text()) / MIB

    def pids(self) -> set[int]:
        text = (self.procs_dir / "cgroup.procs").read_text()
        return {int(p) for p in text.split()}


def cgroup_of(pid: int | str, root: Path = Path("/")) -> Cgroup:
    """The cgroup of ``pid`` (``root/proc/<pid>/cgroup``, mounts under ``root/sys/fs/cgroup``).

    Raises FileNotFoundError when the process is gone, ValueError when no usable controller is listed.
    """
    lines = (root / "proc" / str(pid) / "cgroup").read_text().splitlines()
    base = root / "sys" / "fs" / "cgroup"
    v1: dict[str, str] = {}
    unified = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            unified = path
        for c in controllers.split(","):
            v1[c] = path
    if "cpuacct" in v1 and "memory" in v1:
        cpu = _v1_dir(base, "cpuacct", v1["cpuacct"])
        return Cgroup(1, cpu, _v1_dir(base, "memory", v1["memory"]), _v1_dir(base, "pids", v1.get("pids", ""))
                      if "pids" in v1 else cpu)
    if unified is not None:
        unified_dir = base / unified.lstrip("/")
        return Cgroup(2, unified_dir, unified_dir, unified_dir)
    raise ValueError(f"{root}/proc/{pid}/cgroup: neither cgroup v1 cpuacct+memory nor v2")


def _v1_dir(base: Path, controller: str, path: str) -> Path:
    for mount in (controller, "cpu,cpuacct" if controller == "cpuacct" else controller):
        candidate = base / mount / path.lstrip("/")
        if candidate.exists():
            return candidate
    return base / controller / path.lstrip("/")
