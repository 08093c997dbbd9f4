"""``python -m predictor -i IN -o OUT``: segment every ``IN/<Case>_0000.nii.gz`` into ``OUT/<Case>.nii.gz``.

The model is loaded once; cases are streamed: a reader thread keeps up to ``READ_AHEAD`` decoded cases
queued while the main thread computes, and a writer thread compresses and writes the previous result.
Outputs are uint8 on exactly the input's grid, written to a temporary name and renamed. A case that
cannot be read or segmented fails with one line naming its file; the others still run; exit code 1
if any case failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from challenge.cases import IMAGE_SUFFIX, label_name, list_images
from challenge.cli import Parser, add_images, add_out, add_verbosity, configure_logging, require_folder
from challenge.exitcodes import ExitCode, for_failures
from challenge.nifti import MAX_VOXELS, Geometry, NiftiError, read_image, write_label

log = logging.getLogger("predictor")
READ_AHEAD = 2
_DONE = object()

EPILOG = """\
Examples:
  python -m predictor -i data/phantoms/images -o out/pred
  python -m predictor --images inputs --out outputs --device cpu --threads 2
  python -m predictor -i inputs -o outputs --weights runs/r1/weights     # weights from predictor.train

In the Docker image, `sh predict.sh` runs: python3 -m predictor -i /workspace/inputs -o /workspace/outputs
Exit codes: 0 all cases written, 1 some case failed (one line each, naming the file), 2 bad arguments
or weights, 130 interrupted (docs/cli.md).
"""


@dataclass
class Loaded:
    case: str
    path: Path
    image: np.ndarray | None = None
    geometry: Geometry | None = None
    error: str | None = None
    read_s: float = 0.0


@dataclass
class Report:
    written: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failed.append(message)
        print(f"error: {message}", file=sys.stderr, flush=True)


def _reader(cases: dict[str, Path], out: queue.Queue, max_voxels: int = MAX_VOXELS) -> None:
    for case, path in cases.items():
        clock = time.perf_counter()
        try:
            image, geometry = read_image(path, max_voxels=max_voxels)
            out.put(Loaded(case, path, image, geometry, read_s=time.perf_counter() - clock))
        except NiftiError as err:
            out.put(Loaded(case, path, error=str(err)))
        except Exception as err:  # noqa: BLE001 - any unreadable file fails only its own case
            out.put(Loaded(case, path, error=f"{path}: {type(err).__name__}: {err}".splitlines()[0]))
    out.put(_DONE)


def _writer(jobs: queue.Queue, out_dir: Path, report: Report) -> None:
    while (job := jobs.get()) is not _DONE:
        loaded, labels, summary = job
        target = out_dir / label_name(loaded.case)
        clock = time.perf_counter()
        try:
            write_label(labels, loaded.geometry, target)  # mode 0644: the mount's owner must read it
        except Exception as err:  # noqa: BLE001 - a failed write fails only its own case
            report.fail(f"{target}: cannot write ({type(err).__name__}: {str(err).splitlines()[0]})")
            continue
        with report.lock:
            report.written.append(loaded.case)
        log.info("%s: %s write %.2f s", loaded.case, summary, time.perf_counter() - clock)


def run(in_dir: Path, out_dir: Path, predictor, max_voxels: int = MAX_VOXELS) -> Report:
    """Stream every image of ``in_dir`` through ``predictor`` into ``out_dir``; an image declaring more than
    ``max_voxels`` voxels fails alone, like any unreadable one."""
    cases = list_images(in_dir)
    for stray in sorted(p.name for p in in_dir.iterdir() if not p.name.endswith(IMAGE_SUFFIX)):
        log.warning("skipping %s: not named <Case>%s", in_dir / stray, IMAGE_SUFFIX)
    if not cases:
        log.warning("%s: no <Case>%s images", in_dir, IMAGE_SUFFIX)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    loads: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    jobs: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    threading.Thread(target=_reader, args=(cases, loads, max_voxels), daemon=True, name="reader").start()
    writer = threading.Thread(target=_writer, args=(jobs, out_dir, report), name="writer")
    writer.start()
    try:
        while (loaded := loads.get()) is not _DONE:
            if loaded.error:
                report.fail(loaded.error)
                continue
            try:
                g = loaded.geometry
                labels, t = predictor.predict(loaded.image, g.spacing_kji, g.direction)
            except Exception as err:  # noqa: BLE001 - e.g. out of memory: fail this case, go on
                report.fail(f"{loaded.path}: prediction failed ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})")
                continue
            summary = (f"read {loaded.read_s:.2f} s, stage1 {t.stage1:.2f} s, stage2 {t.stage2:.2f} s "
                       f"(ROI {'x'.join(map(str, t.roi_fine_shape)) or 'empty'}), resample {t.resample:.2f} s,")
            loaded.image = None  # free the input while the writer works
            jobs.put((loaded, labels, summary))
    finally:
        jobs.put(_DONE)
        writer.join()
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(
        prog="python -m predictor", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Segment the 13 FLARE22 organs in every <Case>_0000.nii.gz of a folder (two-stage 3D U-Net).")
    add_images(p, short=True)
    add_out(p, short=True, help="folder for the <Case>.nii.gz label maps")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the GPU if torch sees one, else the CPU (default)")
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped weights)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: env FLARE_THREADS or torch's)")
    p.add_argument("--max-voxels", type=int, default=MAX_VOXELS, metavar="N",
                   help=f"the most voxels an image may declare (default {MAX_VOXELS:,} = 512 x 512 x 2048); a larger "
                        "one fails alone")
    add_verbosity(p)
    p.rename("--input", "--images")
    p.rename("--output", "--out")
    args = p.parse_args(argv)
    require_folder(p, args.images, "--images")
    if args.weights is not None and not args.weights.is_dir():
        p.error(f"--weights {args.weights}: not a folder")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    if args.max_voxels < 1:
        p.error("--max-voxels must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    from .pipeline import Predictor, set_cpu_threads  # torch import after argument checks: --help stays fast

    set_cpu_threads(args.threads)
    clock = time.perf_counter()
    try:
        predictor = Predictor.load(args.weights, args.device)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        print(f"error: cannot load the model: {str(err).splitlines()[0]}", file=sys.stderr)
        return ExitCode.BAD_INPUT if isinstance(err, ValueError) else ExitCode.CASE_FAILED
    log.info("model loaded on %s in %.2f s", predictor.device, time.perf_counter() - clock)
    try:
        report = run(args.images, args.out, predictor, args.max_voxels)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    log.info("%d case(s) written to %s, %d failed, %.1f s in all", len(report.written), args.out,
             len(report.failed), time.perf_counter() - clock)
    return for_failures(len(report.failed))
