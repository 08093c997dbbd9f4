"""Benchmark: scoring a folder on this host's process pool against a Dask LocalCluster of 1 and of 2 workers,
and the resource monitor's overhead per case through Dask against direct.

COUNT cases (default 100) made of DISTINCT generated pairs (default 20: a phantom from
``phantoms.generate_case`` at 96 x 96 x 48 and a prediction with local boundary errors, a missed organ, far
false positives or nothing, as in ``metrics_bench.py``), repeated under different case ids. Each engine
scores the whole folder with ``evaluator.scoring.score_folder`` (reads, 26 numbers per case, metrics.csv and
summary.json), RUNS times, the engines interleaved so that load on the host hits them alike:

- ``pool 1``: ``workers=1``, what ``--workers 1`` does (the cases one after another in this process);
- ``pool 2``: ``workers=2``, a local process pool of 2;
- ``dask 1``, ``dask 2``: ``client=`` a LocalCluster of 1 or 2 single-threaded worker processes
  (``--cluster local:N``), started once and warmed by one untimed run (imports in the workers).

Prints the median wall time per engine and per case, the ratios dask 2 / dask 1 and dask 1 / pool 1, and
checks that every engine wrote the same metrics.csv and summary.json bytes (the run fails otherwise).

    python benchmarks/scale_bench.py                     # 100 cases, 3 runs per engine
    python benchmarks/scale_bench.py --count 40 --runs 5
    python benchmarks/scale_bench.py --no-malloc-trim    # the workers without Dask's malloc setting
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import metrics_bench  # noqa: E402
from metrics_bench import prediction  # noqa: E402

from challenge.cluster import ClusterSpec, dask_client  # noqa: E402
from challenge.nifti import write_label  # noqa: E402
from evaluator.scoring import score_folder  # noqa: E402
from phantoms.generate import PhantomConfig, generate_case  # noqa: E402

KINDS = ("typical",) * 5 + ("missed", "far", "empty")  # the predictions, in turn over the distinct pairs


def make_folders(root: Path, count: int, distinct: int, shape: tuple[int, int, int], seed: int) -> tuple[Path, Path]:
    """GT_DIR and PRED_DIR of ``count`` cases, ``distinct`` generated pairs repeated under other case ids."""
    gt_dir, pred_dir = root / "gt", root / "pred"
    pairs = []
    for n in range(distinct):
        phantom = generate_case(seed, n, PhantomConfig(shape=shape))
        gt, pred = root / f"pair{n}_gt.nii.gz", root / f"pair{n}_pred.nii.gz"
        write_label(phantom.labels, phantom.geometry, gt)
        write_label(prediction(KINDS[n % len(KINDS)], phantom.labels, seed + n), phantom.geometry, pred)
        pairs.append((gt, pred))
    gt_dir.mkdir()
    pred_dir.mkdir()
    for case in range(count):
        gt, pred = pairs[case % distinct]
        shutil.copyfile(gt, gt_dir / f"Case_{case:04d}.nii.gz")
        shutil.copyfile(pred, pred_dir / f"Case_{case:04d}.nii.gz")
    return gt_dir, pred_dir


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# --- monitor_overhead ------------------------------------------------------------------------------------------

COPY = ("import glob, os, shutil, sys; [shutil.copy(f, os.path.join(sys.argv[2], os.path.basename(f)"
        ".replace('_0000.nii.gz', '.nii.gz'))) for f in glob.glob(sys.argv[1] + '/*')]")


def monitor_overhead(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """The resource monitor's wall time per case, run directly (``run_team`` over a folder, as ``python -m
    resource_monitor run`` does) against through Dask (one ``run_case_job`` task per case on a LocalCluster of
    one worker, the organizer's cluster path: the image sent in the job, the files sent back), for the same
    trivial local-mode command; medians over RUNS, seconds per case, and their difference."""
    from resource_monitor.monitor import run_team
    from resource_monitor.remote import CaseJob, run_case_job
    from resource_monitor.settings import RunSettings

    images = work / "overhead_images"
    images.mkdir()
    for n in range(args.overhead_cases):
        (images / f"Case_{n:04d}_0000.nii.gz").write_bytes(b"x" * 1024)  # the command copies it; nothing reads it
    command = f"{sys.executable} -c \"{COPY}\" {{inputs}} {{outputs}}"
    settings = RunSettings(inputs=images, results=work / "overhead_results", team="t", command=command, gpu=None,
                           plots=False, fresh=True)
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.iterdir())
    direct, remote = [], []
    with dask_client(ClusterSpec(local=1)) as client:
        def through_dask() -> None:
            jobs = [CaseJob(settings, case, (images / f"{case}_0000.nii.gz").read_bytes(), "bench") for case in cases]
            client.gather(client.map(run_case_job, jobs, resources={"GPU": 1}, pure=False))

        through_dask()  # warm-up: imports in the worker
        for _ in range(args.runs):
            with contextlib.redirect_stdout(io.StringIO()):  # its line per case
                direct.append(timed(lambda: run_team(settings)) / len(cases))
            remote.append(timed(through_dask) / len(cases))
    return {"direct s/case": statistics.median(direct), "dask s/case": statistics.median(remote),
            "overhead s/case": statistics.median(remote) - statistics.median(direct)}


# ---------------------------------------------------------------------------------------------------------------

def machine() -> str:
    import distributed

    return f"{metrics_bench.machine()}, distributed {distributed.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="cases in the folder (default 100)")
    parser.add_argument("--distinct", type=int, default=20, help="distinct generated pairs (default 20)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 48), metavar=("X", "Y", "Z"))
    parser.add_argument("--runs", type=int, default=3, help="timed runs per engine (median quoted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overhead-cases", type=int, default=6,
                        help="trivial cases for the monitor's overhead through Dask against direct (default 6)")
    parser.add_argument("--no-malloc-trim", action="store_true",
                        help="start the Dask workers without Dask's MALLOC_TRIM_THRESHOLD_=65536 (its nanny default, "
                             "which turns off glibc's adaptive mmap threshold: every large array is mapped afresh)")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    if args.no_malloc_trim:
        import dask

        environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ})
        print(f"Dask workers' environment: {environ}")
    with tempfile.TemporaryDirectory(prefix="scale_bench.") as tmp, ExitStack() as stack:
        work = Path(tmp)
        start = time.perf_counter()
        gt_dir, pred_dir = make_folders(work, args.count, args.distinct, tuple(args.shape), args.seed)
        print(f"{args.count} cases ({args.distinct} distinct pairs, {args.shape[0]}x{args.shape[1]}x{args.shape[2]}) "
              f"written in {time.perf_counter() - start:.1f} s")
        clients = {n: stack.enter_context(dask_client(ClusterSpec(local=n))) for n in (1, 2)}
        engines: dict[str, Callable[[Path], object]] = {
            "pool 1": lambda out: score_folder(gt_dir, pred_dir, out, workers=1, progress=False),
            "pool 2": lambda out: score_folder(gt_dir, pred_dir, out, workers=2, progress=False),
            "dask 1": lambda out: score_folder(gt_dir, pred_dir, out, progress=False, client=clients[1]),
            "dask 2": lambda out: score_folder(gt_dir, pred_dir, out, progress=False, client=clients[2]),
        }
        for name, engine in engines.items():  # untimed: imports in the workers, one-time tables
            print(f"warm-up {name}: {timed(lambda e=engine, n=name: e(work / 'out' / n)):.2f} s")
        times: dict[str, list[float]] = {name: [] for name in engines}
        for run in range(args.runs):
            for name, engine in engines.items():
                times[name].append(timed(lambda e=engine, n=name, r=run: e(work / f"run{r}" / n)))
        reference = {f: (work / "out" / "pool 1" / f).read_bytes() for f in ("metrics.csv", "summary.json")}
        outs = [work / "out" / n for n in engines] + [work / f"run{r}" / n for r in range(args.runs) for n in engines]
        identical = all((out / f).read_bytes() == data for out in outs for f, data in reference.items())
        print(f"\n{'engine':8} {'median s':>9} {'ms/case':>8}   runs (s)")
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, values in times.items():
            print(f"{name:8} {medians[name]:9.2f} {1000 * medians[name] / args.count:8.1f}   "
                  + " ".join(f"{v:.2f}" for v in values))
        print(f"\nratio dask 2 / dask 1 (time): {medians['dask 2'] / medians['dask 1']:.2f}")
        print(f"ratio pool 2 / pool 1 (time): {medians['pool 2'] / medians['pool 1']:.2f}")
        print(f"ratio dask 1 / pool 1 (time): {medians['dask 1'] / medians['pool 1']:.2f}")
        print(f"metrics.csv and summary.json identical across all {len(outs)} runs: {identical}")
        overhead = monitor_overhead(args, work)
        print(f"\nthe monitor, {args.overhead_cases} trivial local-mode cases, medians of {args.runs}: "
              + ", ".join(f"{k} {v:.3f}" for k, v in overhead.items()))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
