"""NVML (nvidia-ml-py) behind a small interface that degrades to "no GPU" on any NVML failure.

Memory figures are MiB (2**20 bytes). ``index`` is NVML's device index, the same index passed to docker.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
MIB = float(1 << 20)


class Gpu:
    """One NVIDIA device. ``Gpu.open(index)`` returns None where NVML or the device is missing."""

    def __init__(self, nvml, handle, index: int):
        self._nvml, self._handle, self.index = nvml, handle, index

    @classmethod
    def open(cls, index: int | None, quiet: bool = False) -> Gpu | None:
        if index is None:
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            return cls(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index), index)
        except Exception as err:  # noqa: BLE001 - NVML library, driver or device missing
            if not quiet:
                log.warning("GPU %s: NVML unavailable (%s); GPU figures stay empty", index, err)
            return None

    def used_mib(self) -> float:
        """Device-wide used memory (NVML ``used``), as the official sampler recorded it."""
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / MIB

    def process_mib(self, pids: set[int]) -> float:
        """Memory of the given host PIDs' compute/graphics contexts; 0 if none of them is on the GPU."""
        total = 0.0
        for getter in (self._nvml.nvmlDeviceGetComputeRunningProcesses,
                       self._nvml.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                procs = getter(self._handle)
            except Exception:  # noqa: BLE001 - not supported on some devices
                continue
            total += sum((p.usedGpuMemory or 0) for p in procs if p.pid in pids)
        return total / MIB

    def describe(self) -> dict:
        n = self._nvml
        return {"index": self.index, "name": _text(n.nvmlDeviceGetName(self._handle)),
                "driver": _text(n.nvmlSystemGetDriverVersion()),
                "memory_total_mib": n.nvmlDeviceGetMemoryInfo(self._handle).total / MIB}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def default_gpu_index() -> int | None:
    """0 when NVML sees an NVIDIA GPU, else None."""
    return None if Gpu.open(0, quiet=True) is None else 0
