"""``python -m predictor.train``: the trainer's command line. It parses once, builds the dataclasses of
``predictor.training.config`` and runs :func:`predictor.training.loop.train` (plain) or
:func:`predictor.training.semi.run_semi` (``--unlabeled``), with one exit-code table for both
(``challenge.exitcodes``):

- 0 ``OK``: the weights are exported;
- 2 ``BAD_INPUT``: bad arguments, or bad data (one line naming the file; nothing is written);
- 1 ``CASE_FAILED``: the run failed on an unexpected error (one line; the traceback with ``-v``);
- 130 ``INTERRUPTED``: Ctrl-C. With ``--unlabeled``, rerun the same command to resume; plain training
  has no checkpoints and starts over.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from challenge.cli import Parser, add_images, add_labels, add_out, add_verbosity, configure_logging
from challenge.exitcodes import ExitCode
from challenge.nifti import NiftiError

from ..pipeline import PipelineConfig, resolve_device, set_cpu_threads
from .config import EPOCHS, RunConfig, SemiConfig, TrainConfig, train_config
from .data import DataError
from .loop import train
from .semi import FILTERS, run_semi

log = logging.getLogger(__name__)

PROG = "python -m predictor.train"

SHIPPED_COMMAND = """\
  # the shipped weights (predictor/weights/), on 2 CPU cores:
  python -m phantoms --out data/train --count 48 --seed 1000 --shape 192 192 96 --domain mixed
  python -m predictor.train --images data/train/images --labels data/train/labels \\
      --out runs/shipped --epochs 95 --seed 0 --threads 2 --device cpu
  cp runs/shipped/weights/* predictor/weights/"""

EPILOG = ("Examples:\n" + SHIPPED_COMMAND + "\n\n  # a quick smoke run:\n"
          "  python -m predictor.train --images d/images --labels d/labels --out runs/smoke --epochs 1\n\n"
          "  # semi-supervised: one pseudo-label round on unlabeled scans, the 70 % most confident kept,\n"
          "  # warm start, half the patches from the labeled scans; compare with --labeled-share 1 (the\n"
          "  # same steps on the labeled scans only); rerun the same command to resume (RUN_DIR layout:\n"
          "  # predictor/training/semi.py)\n"
          "  python -m predictor.train --images d/images --labels d/labels --unlabeled u/images \\\n"
          "      --out runs/semi [--rounds 1 --filter uncertainty --keep 0.7 --labeled-share 0.5]\n\n"
          "Use the result: python -m predictor -i IN -o OUT --weights RUN_DIR/weights\n"
          "Exit codes: 0 exported, 2 bad arguments or data (nothing written), 1 the run failed,\n"
          "130 interrupted (with --unlabeled rerun to resume; plain training starts over).")


class Configs(NamedTuple):
    """What the command line asks for: the networks' settings, the run, and the semi-supervised settings
    (None without ``--unlabeled``)."""

    train: TrainConfig
    run: RunConfig
    semi: SemiConfig | None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
               description="Train the coarse (ROI) and fine (13-organ) 3D U-Nets and export RUN_DIR/weights/.")
    add_images(p, help="folder of <Case>_0000.nii.gz")
    add_labels(p, help="folder of <Case>.nii.gz on the same grids")
    add_out(p, help="run folder (weights/ and train_log.csv)")
    p.add_argument("--epochs", type=int, default=EPOCHS,
                   help=f"fine-network epochs of 50 steps (default {EPOCHS}; the coarse network gets a third)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    _add_network_options(p)
    _add_semi_options(p)
    add_verbosity(p)
    args = p.parse_args(argv)
    _check(p, args)
    return args


def _add_network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                   help="auto (default): fp16 autocast on CUDA, bf16 on a CPU with native bf16 (AVX512-BF16/AMX), "
                        "else fp32; fp32: never autocast")
    p.add_argument("--ce-weight-power", type=float, default=TrainConfig.fine.ce_weight_power,
                   help="fine network: organ c's cross-entropy weight is (median organ size / size of c) to this "
                        f"power, clipped to [1, 8] (default {TrainConfig.fine.ce_weight_power:g}; 0: unweighted)")
    p.add_argument("--fine-mm", type=float, default=PipelineConfig.fine_mm,
                   help="isotropic spacing (mm) of the fine stage, in training and in the exported config "
                        f"(default {PipelineConfig.fine_mm:g}; 3 suits ~3 mm scans)")
    p.add_argument("--fine-scale-aug", type=float, nargs="+", default=TrainConfig.fine_scale_aug, metavar="S",
                   help="scale augmentation: the fine network trains on each case resampled to --fine-mm times "
                        "each S (e.g. 0.9 1 1.1), patches drawn from all (default: 1, none)")
    p.add_argument("--fine-upsample", type=int, nargs=3, default=TrainConfig.fine.unet.upsample,
                   metavar=("FZ", "FY", "FX"),
                   help="fine network: output sub-voxels per input voxel along S-I, A-P, R-L, so labels come "
                        "on a finer grid than --fine-mm (e.g. 1 2 2: 2 x 1 x 1 mm); the labels must be that "
                        f"fine (default {' '.join(map(str, TrainConfig.fine.unet.upsample))})")


def _add_semi_options(p: argparse.ArgumentParser) -> None:
    semi = p.add_argument_group(
        "semi-supervised (only with --unlabeled; see predictor/training/semi.py for the RUN_DIR layout)")
    semi.add_argument("--unlabeled", type=Path, help="folder of unlabeled <Case>_0000.nii.gz to pseudo-label")
    semi.add_argument("--rounds", type=int, default=SemiConfig.rounds,
                      help=f"pseudo-label rounds after round 0 (labeled only); default {SemiConfig.rounds}")
    semi.add_argument("--filter", choices=FILTERS, default=SemiConfig.filter,
                      help="the measure that ranks each pseudo-label for --keep, 0 = best: stability (labels "
                           "changed since the previous round; round 1 keeps all), disagreement (between the two "
                           "inference scales), uncertainty (1 - mean max-probability over the organs); "
                           f"default {SemiConfig.filter}")
    semi.add_argument("--keep", type=float, default=SemiConfig.keep,
                      help=f"fraction of pseudo-labeled cases kept per round, best --filter first "
                           f"(default {SemiConfig.keep:g}; 1: all but empty ones)")
    semi.add_argument("--teacher", choices=("small", "big"), default=SemiConfig.teacher,
                      help="big: a wider teacher (--teacher-width) makes the pseudo-labels, the small model is "
                           "trained on them and exported (default small: the model makes its own)")
    semi.add_argument("--teacher-width", type=float, default=SemiConfig.teacher_width,
                      help="--teacher big: its base channels over the small model's, rounded to an even number "
                           f"(default {SemiConfig.teacher_width:g})")
    semi.add_argument("--labeled-share", type=float, default=SemiConfig.labeled_share,
                      help="share of the patches drawn from the labeled scans in rounds >= 1, so that a few "
                           f"labeled scans are not swamped by many pseudo-labeled ones (default "
                           f"{SemiConfig.labeled_share:g}; 0: every scan equally likely; 1: labeled scans only, "
                           "no pseudo-labels: the equal-steps control)")
    semi.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=SemiConfig.warm_start,
                      help="round k >= 1 starts from round k-1's weights (default); --no-warm-start: from a "
                           "random initialisation")
    semi.add_argument("--steps-per-epoch", type=int, default=0,
                      help="override both networks' steps per epoch (smoke tests; default: 20 coarse, 50 fine)")


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line errors (exit 2) for values out of range."""
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.ce_weight_power < 0:
        p.error("--ce-weight-power must be >= 0")
    if not 0.5 <= args.fine_mm <= 8.0:
        p.error("--fine-mm must be in [0.5, 8] mm")
    if not all(0.5 <= f <= 2.0 and 0.5 <= f * args.fine_mm <= 8.0 for f in args.fine_scale_aug):
        p.error("--fine-scale-aug factors must be in [0.5, 2], and --fine-mm times each in [0.5, 8] mm")
    if len(set(args.fine_scale_aug)) != len(args.fine_scale_aug):
        p.error("--fine-scale-aug: each factor once")
    if not all(1 <= f <= 4 for f in args.fine_upsample):
        p.error("--fine-upsample factors must be in 1..4")
    if args.unlabeled is None:
        return
    if args.rounds < 0:
        p.error("--rounds must be >= 0")
    if not 0.0 < args.keep <= 1.0:
        p.error("--keep must be in (0, 1]")
    if args.steps_per_epoch < 0:
        p.error("--steps-per-epoch must be >= 0")
    if not 0.0 <= args.labeled_share <= 1.0:
        p.error("--labeled-share must be in [0, 1]")
    if not 1.0 <= args.teacher_width <= 4.0:
        p.error("--teacher-width must be in [1, 4]")


def configs(args: argparse.Namespace, argv: Sequence[str] = ()) -> Configs:
    """The dataclasses of the parsed command line ``argv`` (recorded as the run's command)."""
    cfg = train_config(fine_mm=args.fine_mm, fine_scale_aug=tuple(args.fine_scale_aug),
                       fine_upsample=tuple(args.fine_upsample), precision=args.precision,
                       ce_weight_power=args.ce_weight_power)
    run = RunConfig(args.images, args.labels, args.out, epochs=args.epochs, seed=args.seed,
                    command=recorded_command(argv))
    semi = None if args.unlabeled is None else SemiConfig(
        args.unlabeled, rounds=args.rounds, keep=args.keep, filter=args.filter, teacher=args.teacher,
        teacher_width=args.teacher_width, steps_per_epoch=args.steps_per_epoch, labeled_share=args.labeled_share,
        warm_start=args.warm_start)
    return Configs(cfg, run, semi)


def recorded_command(argv: Sequence[str], cwd: Path | None = None) -> str:
    """``python -m predictor.train`` and ``argv`` as given, recorded in the exported config.json and in
    run.json: a relative path stays relative; an absolute path inside the current folder (``cwd``) is
    written relative to it, also as ``--flag=/abs/path``; any other absolute path stays as given."""
    here = Path.cwd() if cwd is None else cwd
    return " ".join([PROG, *(_relative(token, here) for token in argv)])


def _relative(token: str, cwd: Path) -> str:
    flag, eq, value = token.partition("=") if token.startswith("-") else ("", "", token)
    if not eq and flag:
        return token
    path = Path(value)
    if not path.is_absolute() or not path.is_relative_to(cwd):
        return token
    return f"{flag}{eq}{path.relative_to(cwd)}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    configure_logging(args, fmt="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    wanted = configs(args, argv)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        return _fail(ExitCode.BAD_INPUT, str(err))
    threads = set_cpu_threads(args.threads)
    try:
        _train(wanted, device=device, threads=threads, progress=not args.quiet)
    except (DataError, NiftiError) as err:
        return _fail(ExitCode.BAD_INPUT, str(err))
    except KeyboardInterrupt:
        print(_interrupted(wanted), file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as err:  # noqa: BLE001 - any other failure: one line, the traceback with -v
        log.debug("training failed", exc_info=True)
        hint = "" if args.verbose else " (-v for the traceback)"
        return _fail(ExitCode.CASE_FAILED, f"training failed: {type(err).__name__}: {_first_line(err)}{hint}")
    return ExitCode.OK


def _train(wanted: Configs, *, device: torch.device, threads: int, progress: bool) -> Path:
    if wanted.semi is None:
        return train(wanted.train, wanted.run, device=device, threads=threads)
    return run_semi(wanted.train, wanted.run, wanted.semi, device=device, threads=threads, progress=progress)


def _interrupted(wanted: Configs) -> str:
    if wanted.semi is None:
        return (f"interrupted: nothing was written to {wanted.run.out}; plain training has no resume, "
                "rerun the same command to start over")
    return f"interrupted: rerun the same command to resume from the last epoch in {wanted.run.out}"


def _fail(code: ExitCode, message: str) -> ExitCode:
    print(f"error: {message}", file=sys.stderr)
    return code


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else ""
