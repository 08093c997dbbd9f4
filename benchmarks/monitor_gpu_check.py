"""GPU check of the resource monitor, for a host with an NVIDIA GPU, torch (CUDA) and nvidia-ml-py, and no
Docker or SimpleITK needed: the monitor's local mode runs a process that holds a known amount of GPU
memory for HOLD seconds, and the table compares the flare22 and accurate figures with what is expected.

    python benchmarks/monitor_gpu_check.py --out /tmp/gpu_check [--sizes-mib 1024 4096] [--hold 3]

Expected: the process's own peak (NVML per-process) is the allocation plus the CUDA context (a few hundred
MiB); the device-wide peak is at least that; GPU_Mem (stable max of the device figure) is close to the
device peak; AUC_GPU_Time_tol2G is 0 when the device stays under 2048 MiB and about
(peak - 2048) * HOLD otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from resource_monitor.monitor import run_team
from resource_monitor.settings import RunSettings

HOLDER = ("import sys, time, torch; n = int(sys.argv[1]) << 20; x = torch.empty(n, dtype=torch.uint8, "
          "device='cuda'); x.fill_(1); torch.cuda.synchronize(); time.sleep(float(sys.argv[2]))")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_check"))
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--hold", type=float, default=3.0)
    parser.add_argument("--gpu", type=int, default=0)
    args = parser.parse_args()
    inputs = args.out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "Gpu_0000.nii.gz").write_bytes(b"placeholder: the monitor does not read inputs")
    (args.out / "holder.py").write_text(HOLDER.replace("; ", "\n"))
    rows = []
    for size in args.sizes_mib:
        settings = RunSettings(inputs=inputs, results=args.out / "results", team=f"hold{size}", gpu=args.gpu,
                               command=f"{sys.executable} {args.out / 'holder.py'} {size} {args.hold}", timeout_s=120)
        team_dir = run_team(settings)
        flare = pd.read_csv(team_dir / "efficiency.csv").iloc[0]
        acc = pd.read_csv(team_dir / "efficiency_accurate.csv").iloc[0]
        rows.append({"alloc_MiB": size, "proc_peak_MiB": acc["gpu_process_peak_mib"],
                     "context_MiB": acc["gpu_process_peak_mib"] - size, "device_peak_MiB": acc["gpu_device_peak_mib"],
                     "GPU_Mem": flare["GPU_Mem"], "AUC_GPU_Time": flare["AUC_GPU_Time"],
                     "AUC_tol2G": flare["AUC_GPU_Time_tol2G"],
                     "expected_tol2G~": max(0.0, acc["gpu_device_peak_mib"] - 2048) * args.hold,
                     "Time_s": flare["Time"], "startup_s": acc["startup_s"]})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "gpu_check.csv", index=False)
    ok = (table["proc_peak_MiB"] >= table["alloc_MiB"]) & (table["device_peak_MiB"] >= table["proc_peak_MiB"])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print("PASS" if ok.all() else "FAIL: a process peak below its allocation, or a device peak below it")


if __name__ == "__main__":
    main()
