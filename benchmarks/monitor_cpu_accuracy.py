"""CPU figures of the resource monitor against what the formulas predict, for a target that burns one core
for BUSY seconds: in local mode (a host process) and, where a Docker engine answers, in a container
built FROM the local base image (tests/monitor_images, behaviour "burn", 2 s).

Expected values:
- accurate ``cpu_core_s`` = BUSY core-seconds (cgroup cpuacct/cpu.stat for the container, the process
  tree's CPU time in local mode);
- flare22 ``AUC_CPU_Time`` = interval * sum of the official per-sample figure 100 - 100*d_idle/(d_total+0.1)
  with one core busy for BUSY s and the other logical cores idle (other load on the host raises it).

On a shared host the system-wide flare22 figure also counts other users' load, so a second expectation
adds the one busy core to the host's official CPU % measured for 2 s just before each run.
Prints medians of RUNS runs, with ratios measured/expected and the 1-minute load average.

    python benchmarks/monitor_cpu_accuracy.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

from challenge.results import read_table
from resource_monitor.efficiency import official_cpu_percent
from resource_monitor.monitor import run_team
from resource_monitor.sampling import Sampler
from resource_monitor.settings import RunSettings

REPO = Path(__file__).resolve().parents[1]
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {busy}: pass\n"
COPY = ("import pathlib, shutil, sys\nfor f in pathlib.Path(sys.argv[1]).glob('*_0000.nii.gz'): "
        "shutil.copy(f, pathlib.Path(sys.argv[2]) / f.name.replace('_0000', ''))\n")


def flare22_expected(samples: int, interval: float, busy_s: float, cores: int) -> float:
    """AUC_CPU_Time of the official formula: one busy core for busy_s, the other cores idle."""
    busy_n = min(samples, round(busy_s / interval))
    total = cores * interval
    busy = 100 - 100 * (total - interval) / (total + 0.1)
    idle = 100 - 100 * total / (total + 0.1)
    return interval * (busy_n * busy + (samples - busy_n) * idle)


def baseline_percent(seconds: float, interval: float) -> float:
    """Mean official CPU % of the host with no target, sampled just before a run (other users' load)."""
    sampler = Sampler(interval, None)
    sampler.start()
    time.sleep(seconds)
    return float(official_cpu_percent(sampler.stop()).mean())


def one_run(settings: RunSettings, busy_s: float) -> tuple[float, ...]:
    """(flare22 AUC_CPU_Time, idle-host expectation, expectation on the measured baseline, accurate cpu_core_s,
    load average) of one run."""
    load = os.getloadavg()[0]
    base = baseline_percent(2.0, settings.interval_s)
    team = run_team(settings).team
    team_dir = team.path
    flare = read_table(team.efficiency_csv).iloc[0]
    accurate = pd.read_csv(team_dir / "efficiency_accurate.csv").iloc[0]
    n, dt, cores = int(accurate["samples"]), settings.interval_s, psutil.cpu_count()
    expected = flare22_expected(n, dt, busy_s, cores)
    # One more busy core lowers d_idle by dt in each busy sample: +100*dt/(cores*dt + 0.1) points there.
    on_base = dt * (n * base + min(n, round(busy_s / dt)) * 100 * dt / (cores * dt + 0.1))
    return flare["AUC_CPU_Time"], expected, on_base, accurate["cpu_core_s"], load


def tiny_case(folder: Path) -> Path:
    images = folder / "images"
    images.mkdir()
    (images / "Burn_0000.nii.gz").write_bytes(b"any bytes: the monitor only copies inputs")
    return images


def build_burn_image() -> str | None:
    tag = "flare-montest-burn:latest"
    try:
        subprocess.run(["/usr/bin/docker", "build", "-q", "--network", "none", "--build-arg", "BEHAVIOUR=burn",
                        "-t", tag, str(REPO / "tests/monitor_images")], check=True, capture_output=True,
                       env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        print(f"docker: skipped ({type(err).__name__})")
        return None
    return tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-docker", action="store_true")
    args = parser.parse_args()
    busy = 2.0
    with tempfile.TemporaryDirectory(prefix="flare-cpu-acc-") as tmp:
        work = Path(tmp)
        images = tiny_case(work)
        (work / "burn.py").write_text(BURN.format(busy=busy) + COPY)
        modes = {"local (host process)": lambda n: RunSettings(
            inputs=images, results=work / f"local{n}", team="local", gpu=None, plots=False,
            command=f"{sys.executable} {work / 'burn.py'} {{inputs}} {{outputs}}")}
        tag = None if args.no_docker else build_burn_image()
        if tag:
            modes["docker (cgroup)"] = lambda n: RunSettings(
                inputs=images, results=work / f"docker{n}", team="docker", image=tag, gpu=None, plots=False,
                memory="256m", shm_size="64m", timeout_s=60)
        print(f"{psutil.cpu_count()} logical cores, one core busy for {busy:.0f} s, {args.runs} runs, medians")
        print("flare22 expected: on an idle host / on the host's baseline measured for 2 s just before the run")
        print(f"{'mode':<22} {'AUC_CPU flare22':>16} {'idle exp.':>9} {'ratio':>6} {'base exp.':>9} {'ratio':>6} "
              f"{'core-s accurate':>16} {'expected':>9} {'ratio':>6} {'load1':>6}")
        for name, make in modes.items():
            runs = [one_run(make(n), busy) for n in range(args.runs)]
            auc, exp, on_base, core_s, load = (statistics.median(r[i] for r in runs) for i in range(5))
            print(f"{name:<22} {auc:16.1f} {exp:9.1f} {auc / exp:6.3f} {on_base:9.1f} {auc / on_base:6.3f} "
                  f"{core_s:16.3f} {busy:9.3f} {core_s / busy:6.3f} {load:6.2f}")


if __name__ == "__main__":
    main()
