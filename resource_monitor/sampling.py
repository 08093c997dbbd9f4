"""One sampler for both modes: every ``interval`` seconds on a monotonic clock (deadlines t0 + n*interval,
so the period does not drift with the query time), record what the flare22 and the accurate figures need.

Per sample: the time since the sampler started (s), NVML device-wide used memory (MiB), the target's own
GPU memory (MiB), system-wide cumulative CPU times (user, system, idle; s), system RAM used (MiB), and the
target's cumulative CPU time (core-seconds) and memory (MiB) from its probe. Missing figures are None.
The sampler never knows whether the target is a container or a host process: a :class:`Probe` tells it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import psutil

from resource_monitor.gpu import Gpu

MIB = float(1 << 20)


class Probe(Protocol):
    """The target being measured (a container's cgroup, or a host process tree)."""

    def read(self) -> tuple[set[int], float | None, float | None]:
        """(host PIDs, cumulative CPU core-seconds, memory MiB), in one pass."""
        ...


@dataclass
class Series:
    interval_s: float
    cpu_before: tuple[float, float, float]  # system (user, system, idle) s when the sampler started
    t: list[float] = field(default_factory=list)
    gpu_device_mib: list[float | None] = field(default_factory=list)
    gpu_process_mib: list[float | None] = field(default_factory=list)
    cpu_times: list[tuple[float, float, float]] = field(default_factory=list)
    ram_used_mib: list[float] = field(default_factory=list)
    target_cpu_s: list[float | None] = field(default_factory=list)
    target_memory_mib: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict) -> Series:
        series = cls(data["interval_s"], tuple(data["cpu_before"]))
        for key, value in data.items():
            if key not in ("interval_s", "cpu_before"):
                setattr(series, key, [tuple(v) if isinstance(v, list) else v for v in value])
        return series


def _cpu_times() -> tuple[float, float, float]:
    t = psutil.cpu_times()
    return (t.user, t.system, t.idle)


class Sampler:
    """Samples in a background thread from :meth:`start` to :meth:`stop`; attach the probe when ready."""

    def __init__(self, interval_s: float, gpu: Gpu | None):
        self.interval_s = interval_s
        self.gpu = gpu
        self.probe: Probe | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self.t0 = 0.0
        self.series: Series | None = None

    def start(self) -> float:
        """Start sampling; returns the monotonic start time t0 (the official Time starts here)."""
        self.series = Series(self.interval_s, _cpu_times())
        self.t0 = time.monotonic()
        self._thread.start()
        return self.t0

    def stop(self) -> Series:
        self._stop.set()
        self._thread.join()
        assert self.series is not None
        return self.series

    def _loop(self) -> None:
        n = 1
        while not self._stop.wait(max(0.0, self.t0 + n * self.interval_s - time.monotonic())):
            self._sample()
            # If a sample overran whole periods, skip the missed deadlines rather than bunching samples.
            n = max(n + 1, int((time.monotonic() - self.t0) / self.interval_s) + 1)

    def _sample(self) -> None:
        s = self.series
        assert s is not None  # set by start(), before the sampling thread runs
        probe = self.probe
        pids, cpu_s, memory = (_safe(probe.read) or (None, None, None)) if probe else (None, None, None)
        s.t.append(time.monotonic() - self.t0)
        s.gpu_device_mib.append(_safe(self.gpu.used_mib) if self.gpu else None)
        s.gpu_process_mib.append(_safe(lambda: self.gpu.process_mib(pids)) if self.gpu and pids else
                                 (0.0 if self.gpu else None))
        s.cpu_times.append(_cpu_times())
        s.ram_used_mib.append(psutil.virtual_memory().used / MIB)
        s.target_cpu_s.append(cpu_s)
        s.target_memory_mib.append(memory)


def _safe(fn):
    """The figure, or None when the target vanished between two reads (a race at exit)."""
    try:
        return fn()
    except (OSError, ValueError, psutil.Error):
        return None
    except Exception:  # noqa: BLE001 - NVML errors have their own hierarchy
        return None
