"""GPU check of the resource monitor, for a host with an NVIDIA GPU, torch (CUDA build) and nvidia-ml-py, and
no Docker or SimpleITK needed: the monitor's local mode runs, per size, a process that allocates exactly
SIZE MiB with ``torch.empty(..., device="cuda")``, touches it and holds it for HOLD seconds. The table
compares the flare22 and accurate figures with what they should be:

- accurate ``gpu_process_peak_mib`` = SIZE + the child's CUDA context (expected 100-2048 MiB),
- the difference of the process peaks of two sizes = the difference of the sizes (the contexts cancel),
- flare22 ``GPU_Mem`` (device-wide stable max) and accurate ``gpu_device_peak_mib`` = the device's
  baseline before the run + the process peak,
- ``gpu_device_auc_mib_s`` = baseline x (Time - HOLD) + device peak x HOLD; ``AUC_GPU_Time_tol2G`` the same
  above 2048 MiB (0 when the device stays under 2 GiB); ``gpu_process_auc_mib_s`` = process peak x HOLD,
- the mean sample period = the 0.1 s schedule (no drift).

    PYTHONPATH=. python benchmarks/monitor_gpu_check.py                 # GPU 0, 1024 and 4096 MiB, 4 s
    PYTHONPATH=. python benchmarks/monitor_gpu_check.py --gpu 1 --sizes-mib 2048 8192 --hold 6 --out /tmp/g

Run from the repository root (or after ``pip install -e .``). Packages: torch (CUDA), nvidia-ml-py, numpy,
pandas, psutil, matplotlib. About 30 s for the defaults. Writes OUT/gpu_check.csv and the monitor's
results (per-case JSON and PNG) under OUT/results. Exit status 0 when every check is within tolerance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from resource_monitor.gpu import Gpu
from resource_monitor.monitor import run_team
from resource_monitor.settings import RunSettings

HOLDER = ("import sys, time, torch\nn = int(sys.argv[1]) << 20\n"
          "x = torch.empty(n, dtype=torch.uint8, device='cuda')\nx.fill_(1)\ntorch.cuda.synchronize()\n"
          "time.sleep(float(sys.argv[2]))\n")


def run_size(gpu: int, size_mib: int, hold_s: float, out: Path) -> dict:
    inputs = out / f"inputs_{size_mib}"
    inputs.mkdir(parents=True, exist_ok=True)
    # The monitor only copies inputs to the per-case folder: any bytes under the right name will do.
    (inputs / f"Gpu{size_mib}_0000.nii.gz").write_bytes(b"placeholder: the monitor does not read inputs")
    baseline = Gpu.open(gpu).used_mib()
    settings = RunSettings(inputs=inputs, results=out / "results", team=f"hold{size_mib}", gpu=gpu, timeout_s=120,
                           command=f"{sys.executable} {out / 'holder.py'} {size_mib} {hold_s}")
    team_dir = run_team(settings).team.path
    flare = pd.read_csv(team_dir / "efficiency.csv").iloc[0]
    accurate = pd.read_csv(team_dir / "efficiency_accurate.csv").iloc[0]
    return {"size": size_mib, "baseline": baseline, "flare": flare, "accurate": accurate}


def within(got: float, expected: float, rel: float) -> bool:
    return abs(got - expected) <= rel * abs(expected)


def checks_of(r: dict, hold: float) -> list[tuple]:
    """(check, measured, expected, tolerance, ok, note) for one size."""
    f, a, size, base = r["flare"], r["accurate"], r["size"], r["baseline"]
    tag = f"{size} MiB:"
    peak = a["gpu_process_peak_mib"]
    device_peak = base + peak
    rest = max(f["Time"] - hold, 0.0)  # the device holds its baseline alone outside the hold
    tol2g = max(base - 2048, 0) * rest + max(device_peak - 2048, 0) * hold
    rows = [(f"{tag} status", 0.0, 0.0, "", f["status"] == "ok", f["status"]),
            (f"{tag} process peak (MiB)", peak, float(size), "+ctx", 100 <= peak - size <= 2048,
             f"size + CUDA context ({peak - size:.0f} MiB)")]
    for name, got, expected, rel, note in [
        ("GPU_Mem flare22 (MiB)", f["GPU_Mem"], device_peak, 0.03, "baseline + process peak"),
        ("device peak accurate (MiB)", a["gpu_device_peak_mib"], device_peak, 0.03, "baseline + process peak"),
        ("device AUC accurate (MiB*s)", a["gpu_device_auc_mib_s"], base * rest + device_peak * hold, 0.25,
         "baseline x (Time-hold) + peak x hold"),
        ("process AUC accurate (MiB*s)", a["gpu_process_auc_mib_s"], peak * hold, 0.25, "peak x hold"),
        ("AUC_GPU_Time_tol2G flare22 (MiB*s)", f["AUC_GPU_Time_tol2G"], tol2g, 0.25, "as above, above 2048 MiB"),
        ("mean sample period (s)", a["mean_period_s"], 0.1, 0.05, "drift-free 10 Hz schedule"),
    ]:
        ok = within(got, expected, rel) if expected else got == 0
        rows.append((f"{tag} {name}", got, expected, f"±{rel:.0%}", ok, note))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", type=int, default=0, help="NVML index (the one the monitor samples)")
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1024, 4096], help="MiB to allocate")
    parser.add_argument("--hold", type=float, default=4.0, help="seconds the allocation is held")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_check"))
    args = parser.parse_args()
    if Gpu.open(args.gpu) is None:
        print(f"GPU {args.gpu}: NVML sees no such device; nothing to check", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "holder.py").write_text(HOLDER)
    runs = [run_size(args.gpu, size, args.hold, args.out) for size in args.sizes_mib]
    rows = [row for r in runs for row in checks_of(r, args.hold)]
    if len(runs) >= 2:
        diff = runs[-1]["accurate"]["gpu_process_peak_mib"] - runs[0]["accurate"]["gpu_process_peak_mib"]
        expected = float(runs[-1]["size"] - runs[0]["size"])
        rows.append(("process peak difference (MiB)", diff, expected, "±2%", within(diff, expected, 0.02),
                     "the CUDA contexts cancel"))
    table = pd.DataFrame(rows, columns=["check", "measured", "expected", "tolerance", "ok", "note"])
    table.to_csv(args.out / "gpu_check.csv", index=False)
    baselines = ", ".join(f"{r['baseline']:.0f}" for r in runs)
    print(f"device baseline before each run: {baselines} MiB; hold {args.hold} s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"{int(table['ok'].sum())}/{len(table)} checks within tolerance")
    if any(r["accurate"]["gpu_process_peak_mib"] == 0 for r in runs):
        print("process peak 0 while the device rose: NVML reports PIDs of another PID namespace (the monitor "
              "runs inside a container?): the per-process figure is unusable there.")
    return 0 if table["ok"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
