"""From a sampled :class:`~resource_monitor.sampling.Series` to efficiency figures, in two modes.

flare22 (efficiency.csv): the official load_json.py definitions (JunMa11/FLARE, FLARE22/Evaluation):
  CPU%     = 100 - 100*d_idle/(d_user + d_system + d_idle + 0.1), from system-wide cpu_times deltas
  GPU      = NVML device-wide used MiB;   RAM = system used MiB
  AUC_x    = interval * sum(x)            (every sample is credited one interval, as the official code did)
  GPU_Mem  = the "stable max": the largest value seen in more than 2 % of the samples
  AUC_GPU_Time_tol2G = interval * sum(max(0, GPU - 2048))
  Time     = seconds from the sampler's start to the target's exit (the official Time also included the
             `--rm` teardown, a few tens of ms; each case record keeps that as time_s_with_teardown)
  a timed-out case gets Time 3600, AUC_GPU_Time_tol2G 29491200 and AUC_CPU_Time 360000.
  Every constant above is the challenge profile's ``[efficiency]`` (challenge.profile; flare22's by default):
  the interval, the GPU peak ("stable_max", or FLARE23's "raw_max"), the tolerance, the "+0.1", and a
  timed-out case's figures (the penalties of the ranked efficiency.csv columns).
  Rounding as load_json.py did (np.round): Time, CPU_Utilization, AUC_CPU_Time, RAM to 2 decimals;
  GPU_Mem, AUC_GPU_Time, AUC_RAM_Time to 0; AUC_GPU_Time_tol2G (not in load_json.py) to 2.
accurate (efficiency_accurate.csv): the target's own resources, integrated with the trapezoid rule over
  the real sample times; CPU in core-seconds from its cgroup (containers) or process tree (local mode);
  GPU from NVML per-process memory of its PIDs; start-up separated from run time: create_s (docker create
  returned), startup_s (started), first_seen_s (first sample that read the target), run_s (start -> exit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from challenge.profile import Efficiency, default
from resource_monitor.sampling import Series

FLARE22_COLUMNS = ["Name", "Time", "GPU_Mem", "AUC_GPU_Time", "AUC_GPU_Time_tol2G", "CPU_Utilization",
                   "AUC_CPU_Time", "RAM", "AUC_RAM_Time", "status"]
ACCURATE_COLUMNS = ["Name", "status", "create_s", "startup_s", "first_seen_s", "run_s", "wall_s", "cpu_core_s",
                    "cpu_mean_cores",
                    "cpu_peak_cores", "memory_peak_mib", "memory_auc_mib_s", "gpu_process_peak_mib",
                    "gpu_process_auc_mib_s", "gpu_device_peak_mib", "gpu_device_auc_mib_s",
                    "gpu_device_auc_tol2g_mib_s", "samples", "mean_period_s"]


@dataclass
class Timeline:
    """Monotonic seconds since the sampler started."""

    started: float  # the target is running (container started / process spawned)
    exited: float  # the target exited (or was killed)
    created: float | None = None  # the container exists (docker create returned); None in local mode


def official_cpu_percent(series: Series, bias: float | None = None) -> np.ndarray:
    """Per-sample "used" CPU % with the official formula and its +0.1 s denominator bias (``bias``)."""
    times = np.array([series.cpu_before, *series.cpu_times], dtype=float)
    d = np.diff(times, axis=0)  # (n, 3): user, system, idle
    bias = default().efficiency.cpu_denominator_bias if bias is None else bias
    idle_pct = 100.0 * d[:, 2] / (d.sum(axis=1) + bias)
    return 100.0 - idle_pct


def stable_max(values: list[float], fraction: float | None = None) -> float | None:
    """The largest value occurring in more than ``fraction`` (2 %) of the samples; the plain max if none does
    (the official code crashed there); None for no samples."""
    if not values:
        return None
    fraction = default().efficiency.stable_max_fraction if fraction is None else fraction
    counts = Counter(values)
    stable = [v for v, c in counts.items() if c > fraction * len(values)]
    return max(stable) if stable else max(values)


def gpu_peak(values: list[float], rules: Efficiency) -> float | None:
    """GPU_Mem: the stable max (FLARE22) or the raw max (FLARE23) of the samples; None for no samples."""
    if rules.gpu_peak == "raw_max":
        return max(values) if values else None
    return stable_max(values, rules.stable_max_fraction)


def flare22_figures(series: Series, time_s: float, timed_out: bool, rules: Efficiency | None = None,
                    penalties: dict[str, float] | None = None) -> dict:
    """The efficiency.csv row (without Name and status). GPU columns are None without a GPU. ``rules``: the
    profile's efficiency definitions; ``penalties``: a timed-out case's figures (default: flare22's)."""
    profile = default()
    rules = rules or profile.efficiency
    penalties = profile.efficiency_penalties() if penalties is None else penalties
    dt = series.interval_s
    cpu = official_cpu_percent(series, rules.cpu_denominator_bias) if len(series) else np.zeros(0)
    ram = np.asarray(series.ram_used_mib, dtype=float)
    gpu_values = [v for v in series.gpu_device_mib if v is not None]
    has_gpu = bool(gpu_values)
    gpu = np.asarray(gpu_values, dtype=float)
    gpu_mem = gpu_peak(gpu_values, rules)  # None exactly when there is no GPU sample
    # Rounded exactly where, and as, load_json.py rounded (np.round, half to even); tol2G is ours: 2 decimals.
    row = {
        "Time": _r(time_s, 2),
        "GPU_Mem": _r(gpu_mem, 0) if gpu_mem is not None else None,
        "AUC_GPU_Time": _r(gpu.sum() * dt, 0) if has_gpu else None,
        "AUC_GPU_Time_tol2G": _r(np.maximum(gpu - rules.gpu_tolerance_mib, 0).sum() * dt, 2) if has_gpu else None,
        "CPU_Utilization": _r(cpu.max(), 2) if len(cpu) else 0.0,
        "AUC_CPU_Time": _r(cpu.sum() * dt, 2),
        "RAM": _r(ram.max(), 2) if len(ram) else 0.0,
        "AUC_RAM_Time": _r(ram.sum() * dt, 0),
    }
    if timed_out:
        row.update({column: float(value) for column, value in penalties.items() if column in row})
    return row


def _r(value: float, decimals: int) -> float:
    return float(np.round(value, decimals))


def _trapezoid(t: np.ndarray, y: list[float | None]) -> tuple[float | None, float | None]:
    """(peak, trapezoid integral over t) of the non-missing values; (None, None) if all are missing."""
    mask = np.array([v is not None for v in y], dtype=bool)
    if not mask.any():
        return None, None
    v = np.asarray([x for x in y if x is not None], dtype=float)
    return float(v.max()), float(np.trapezoid(v, t[mask])) if mask.sum() > 1 else 0.0


def accurate_figures(series: Series, timeline: Timeline, cpu_total_s: float | None,
                     tolerance_mib: float | None = None) -> dict:
    """The efficiency_accurate.csv row (without Name and status). ``tolerance_mib``: the profile's GPU
    tolerance (default flare22's 2048) for ``gpu_device_auc_tol2g_mib_s``.

    ``cpu_total_s``: the target's CPU time (core-seconds) over its whole life where the runner knows it
    exactly (e.g. a process's final rusage); else the last cgroup/process-tree reading is used.
    """
    t = np.asarray(series.t, dtype=float)
    cpu_s = [v for v in series.target_cpu_s if v is not None]
    cpu_core_s = cpu_total_s if cpu_total_s is not None else (max(cpu_s) if cpu_s else None)
    run_s = max(timeline.exited - timeline.started, 0.0)
    peak_cores = None
    if len(cpu_s) > 1:
        tc = t[[v is not None for v in series.target_cpu_s]]
        rates = np.diff(cpu_s) / np.maximum(np.diff(tc), 1e-9)
        peak_cores = float(rates.max())
    seen = [ti for ti, v in zip(t, series.target_cpu_s, strict=True) if v is not None]
    mem_peak, mem_auc = _trapezoid(t, series.target_memory_mib)
    gp_peak, gp_auc = _trapezoid(t, series.gpu_process_mib)
    gd_peak, gd_auc = _trapezoid(t, series.gpu_device_mib)
    tolerance = default().efficiency.gpu_tolerance_mib if tolerance_mib is None else tolerance_mib
    tol = [None if v is None else max(0.0, v - tolerance) for v in series.gpu_device_mib]
    _, gd_tol = _trapezoid(t, tol)
    return {
        "create_s": None if timeline.created is None else round(timeline.created, 4),
        "startup_s": round(timeline.started, 4),
        "first_seen_s": round(float(seen[0]), 4) if seen else None,
        "run_s": round(run_s, 4),
        "wall_s": round(timeline.exited, 4),
        "cpu_core_s": None if cpu_core_s is None else round(cpu_core_s, 4),
        "cpu_mean_cores": None if cpu_core_s is None or run_s == 0 else round(cpu_core_s / run_s, 4),
        "cpu_peak_cores": None if peak_cores is None else round(peak_cores, 4),
        "memory_peak_mib": mem_peak, "memory_auc_mib_s": mem_auc,
        "gpu_process_peak_mib": gp_peak, "gpu_process_auc_mib_s": gp_auc,
        "gpu_device_peak_mib": gd_peak, "gpu_device_auc_mib_s": gd_auc, "gpu_device_auc_tol2g_mib_s": gd_tol,
        "samples": len(series),
        "mean_period_s": round(float(np.diff(t).mean()), 5) if len(t) > 1 else None,
    }


BUSY_CORES = 0.3  # other processes using more than this many cores on average: the host was shared


def other_cores(series: Series, target_core_s: float | None) -> float | None:
    """The mean number of CPU cores that processes other than the target used while it ran: the host's busy
    core-seconds (user + system, all cores) minus the target's own, over the sampled time. The flare22 CPU
    and Time figures are host-wide, so a value well above the monitor's own few hundredths of a core means
    the case shared the host with other load. None without samples or the target's CPU time."""
    if not len(series) or target_core_s is None or series.t[-1] <= 0:
        return None
    before, last = series.cpu_before, series.cpu_times[-1]
    busy = (last[0] - before[0]) + (last[1] - before[1])
    return max(busy - target_core_s, 0.0) / series.t[-1]


def host_load(others: list[float], load1: list[float]) -> dict:
    """An attempt's host load from its cases' :func:`other_cores` and 1-minute load averages."""
    mean = float(np.mean(others)) if others else None
    return {"other_cores_mean": mean, "other_cores_max": max(others) if others else None,
            "load1_max": max(load1) if load1 else None, "cases": len(others),
            "busy": bool(mean is not None and mean > BUSY_CORES)}
