"""GPU benchmark of the predictor, for a machine with torch (CUDA), numpy, scipy, nvidia-ml-py and
psutil but no SimpleITK, nibabel or Docker. Input is made in memory: a phantom from the phantoms
package (SimpleITK is only needed there to write files, so a placeholder module stands in for it
when it is absent), 512x512x100 by default.

Reports, per warm case (model loaded, array in host memory -> labels in host memory): stage 1,
stage 2, resample, end-to-end medians; emulated NIfTI I/O (gzip level-1 decompress of the image
bytes / compress of the label bytes, which is what dominates reading and writing .nii.gz) and the
streamed per-case time max(compute, read, write), since the CLI overlaps them in threads;
cold start (fresh torch+CUDA init + model load + first case); peak GPU memory per process from NVML
(CUDA context included, sampled every 5 ms) and torch's own peak; DSC vs the phantom's labels; and the
same case on the CPU for a ratio. Targets: <= 1.0 s per case, <= 1.5 GiB, cold start <= 6 s.

    python benchmarks/predictor_gpu_bench.py                  # 10 warm runs
    python benchmarks/predictor_gpu_bench.py --runs 20 --shape 512 512 200 --cpu-threads 8
    python benchmarks/predictor_gpu_bench.py --device cpu --runs 1 --shape 96 96 48   # smoke run, no GPU
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gzip  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
try:
    import SimpleITK  # noqa: F401
except ImportError:  # the phantom generator only calls SimpleITK to write files
    sys.modules["SimpleITK"] = types.ModuleType("SimpleITK")

from phantoms.generate import PhantomConfig, generate_case  # noqa: E402
from predictor.pipeline import Predictor  # noqa: E402

MIB = 2**20
IMPORT_S = time.perf_counter() - START  # python + torch + numpy imports: part of a cold start


class NvmlPeak:
    """Peak GPU memory (MiB) that NVML attributes to this process, sampled in a thread."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import pynvml

        self.nvml, self.pid, self.interval = pynvml, os.getpid(), interval_s
        pynvml.nvmlInit()
        index = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0] or 0)
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index if index >= 0 else 0)
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> float:
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        return sum((p.usedGpuMemory or 0) for p in procs if p.pid == self.pid) / MIB

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(self.nvml.NVMLError):
                self.peak = max(self.peak, self._used())
            time.sleep(self.interval)

    def __enter__(self) -> NvmlPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def mean_dsc(gt: np.ndarray, pred: np.ndarray) -> float:
    scores = [2 * ((gt == o) & (pred == o)).sum() / ((gt == o).sum() + (pred == o).sum())
              for o in range(1, 14) if (gt == o).any()]
    return float(np.mean(scores))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--shape", type=int, nargs=3, default=(512, 512, 100), help="i j k voxels")
    p.add_argument("--seed", type=int, default=2000)
    p.add_argument("--cpu-threads", type=int, default=4, help="threads for the CPU comparison (0 skips it)")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a smoke run of this script where there is no GPU (no NVML; GPU figures are nan)")
    args = p.parse_args()
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        sys.exit("predictor_gpu_bench: torch sees no CUDA GPU (--device cpu for a smoke run)")
    case = generate_case(args.seed, 0, PhantomConfig(shape=tuple(args.shape), domain="portal"))
    gen_s = time.perf_counter() - START
    g = case.geometry

    # a --device cpu smoke run has no GPU memory to sample: a stand-in whose peak is nan
    no_gpu = contextlib.nullcontext(types.SimpleNamespace(peak=float("nan")))
    with NvmlPeak() if gpu else no_gpu as nvml:
        clock = time.perf_counter()
        model = Predictor.load(args.weights, device=args.device)
        labels, _ = model.predict(case.image, g.spacing_kji, g.direction)
        cold = IMPORT_S + time.perf_counter() - clock  # imports + CUDA init + model load + first case
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        runs = []
        for _ in range(args.runs):
            clock = time.perf_counter()
            labels, t = model.predict(case.image, g.spacing_kji, g.direction)
            runs.append((time.perf_counter() - clock, t))
        torch_peak = torch.cuda.max_memory_allocated() / MIB if gpu else float("nan")
    dsc = mean_dsc(case.labels, labels)

    clock = time.perf_counter()
    packed = gzip.compress(case.image.tobytes(), compresslevel=1)
    gzip.decompress(packed)
    read_s = time.perf_counter() - clock
    clock = time.perf_counter()
    gzip.compress(labels.tobytes(), compresslevel=1)
    write_s = time.perf_counter() - clock

    med = {k: statistics.median(getattr(t, k) for _, t in runs) for k in ("stage1", "stage2", "resample")}
    e2e = statistics.median(s for s, _ in runs)
    cpu_s = float("nan")
    if args.cpu_threads and gpu:
        torch.set_num_threads(args.cpu_threads)
        cpu = Predictor.load(args.weights, device="cpu")
        cpu.predict(case.image, g.spacing_kji, g.direction)
        clock = time.perf_counter()
        cpu.predict(case.image, g.spacing_kji, g.direction)
        cpu_s = time.perf_counter() - clock

    where = torch.cuda.get_device_name(0) if gpu else "the CPU (smoke run, not a GPU figure)"
    print(f"\npredictor GPU benchmark on {where}, torch {torch.__version__}, "
          f"case {'x'.join(map(str, args.shape))} (i j k), fine ROI {'x'.join(map(str, runs[-1][1].roi_fine_shape))}, "
          f"median of {args.runs} warm runs (phantom made in {gen_s:.1f} s)")
    rows = [
        ("stage 1 (ROI) s", med["stage1"], ""),
        ("stage 2 (fine) s", med["stage2"], ""),
        ("resample back s", med["resample"], ""),
        ("compute end to end s", e2e, "<= 1.0"),
        ("emulated read (gunzip) s", read_s, "overlapped"),
        ("emulated write (gzip -1) s", write_s, "overlapped"),
        ("streamed per case s", max(e2e, read_s, write_s), "<= 1.0"),
        ("cold start (import+load+1st) s", cold, "<= 6"),
        ("peak GPU MiB (NVML, process)", nvml.peak, "<= 1536"),
        ("peak GPU MiB (torch allocated)", torch_peak, ""),
        ("mean DSC vs phantom labels", dsc, ">= 0.95"),
        (f"CPU ({args.cpu_threads} threads) s", cpu_s, f"ratio CPU/GPU {cpu_s / e2e:.1f}"),
    ]
    print(f"{'measure':34} {'value':>10}  target")
    for name, value, target in rows:
        print(f"{name:34} {value:10.3f}  {target}")


if __name__ == "__main__":
    main()
