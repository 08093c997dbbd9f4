"""Sampling overhead of the resource monitor at 10 Hz, in % of one core (target: <= 1 %).

Runs the sampler for SECONDS with a probe attached (a cgroup probe of this process's own cgroup, as for
a container, and a psutil process-tree probe, as in local mode), and measures this process's CPU time
(user + system, getrusage) against an idle window of the same length with no sampler. Prints medians of
RUNS repetitions and the drift of the schedule (last sample time against n * interval).

    python benchmarks/monitor_overhead.py --seconds 10 --runs 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

from resource_monitor.cgroups import cgroup_of
from resource_monitor.gpu import Gpu
from resource_monitor.runners import CgroupProbe, ProcessTreeProbe
from resource_monitor.sampling import Sampler


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def window(seconds: float, probe, interval: float) -> tuple[float, float, int]:
    """(CPU seconds used, schedule drift in s, samples) over ``seconds``; no sampler when probe is 'none'."""
    start = cpu_s()
    if probe == "none":
        time.sleep(seconds)
        return cpu_s() - start, 0.0, 0
    sampler = Sampler(interval, Gpu.open(0, quiet=True))
    sampler.start()
    sampler.probe = probe
    time.sleep(seconds)
    series = sampler.stop()
    drift = series.t[-1] - len(series) * interval
    return cpu_s() - start, drift, len(series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    probes = {"no sampler": lambda: "none", "cgroup probe": lambda: CgroupProbe(cgroup_of(os.getpid())),
              "process-tree probe": lambda: ProcessTreeProbe(os.getpid())}
    results = {name: [window(args.seconds, make(), args.interval) for _ in range(args.runs)]
               for name, make in probes.items()}
    idle = statistics.median(r[0] for r in results["no sampler"])
    print(f"{args.runs} runs of {args.seconds:.0f} s at {1 / args.interval:.0f} Hz, GPU: "
          f"{'NVML' if Gpu.open(0, quiet=True) else 'none'}; medians")
    print(f"{'mode':<20} {'CPU s':>8} {'overhead % of one core':>24} {'samples':>8} {'drift s':>9}")
    for name, runs in results.items():
        used = statistics.median(r[0] for r in runs)
        overhead = 100 * (used - idle) / args.seconds
        print(f"{name:<20} {used:8.3f} {overhead:24.2f} {statistics.median(r[2] for r in runs):8.0f} "
              f"{statistics.median(r[1] for r in runs):9.4f}")


if __name__ == "__main__":
    main()
