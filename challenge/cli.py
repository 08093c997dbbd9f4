"""What every command-line tool of the harness shares: one flag vocabulary, one-line argument errors with
exit code 2, typed and bounded number arguments, old flag spellings accepted with a warning, and one way
to set up logging.

The vocabulary (docs/cli.md has the table of old and new spellings):

``--images``   a folder of ``<Case>_0000.nii.gz`` CT images (``-i`` in the predictor)
``--labels``   a folder of ``<Case>.nii.gz`` label maps (the ground truth where only one label folder is given)
``--gt``, ``--pred``  the two label folders where they meet (``evaluator score``)
``--out``      the folder a command writes (``-o`` in the predictor)
``--results``  the resource monitor's results root, one folder per team
``--cases``    a glob on case ids, never a count or a folder
``--count``    how many (phantoms, benchmark cases)
``-q``/``-v``  quieter / the harness's own debug lines
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from challenge.exitcodes import ExitCode, HostFault

PACKAGES = ("challenge", "phantoms", "predictor", "resource_monitor", "evaluator", "organizer")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), exit code 2, and renamed flags.

    :meth:`rename` keeps an old spelling working: it is rewritten to the new one before parsing, with a
    one-line deprecation warning on stderr, and never appears in ``--help``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renamed: dict[str, str] = {}

    def rename(self, old: str, new: str) -> None:
        """Accept ``old`` as a deprecated spelling of ``new``."""
        self.renamed[old] = new

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.BAD_INPUT, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        tokens = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._modernise(tokens), namespace)

    def _modernise(self, tokens: list[str]) -> list[str]:
        out: list[str] = []
        for n, token in enumerate(tokens):
            if token == "--":
                return out + tokens[n:]
            flag, eq, value = token.partition("=")
            if flag in self.renamed:
                new = self.renamed[flag]
                print(f"{self.prog}: warning: {flag} is deprecated; use {new}", file=sys.stderr)
                token = f"{new}{eq}{value}"
            out.append(token)
        return out


def bounded(kind: type = float, low: float | None = None, high: float | None = None, what: str = "",
            strict_low: bool = False) -> Callable[[str], float | int]:
    """An argparse ``type=`` that parses ``kind`` and checks low <= value <= high (low < value if strict)."""
    name = "an integer" if kind is int else "a number"

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {name}: {text!r}") from None
        too_low = low is not None and (value <= low if strict_low else value < low)
        if too_low or (high is not None and value > high):
            lo = "" if low is None else (f"> {low:g}" if strict_low else f">= {low:g}")
            hi = "" if high is None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(f"{what or 'must be'} {' and '.join(x for x in (lo, hi) if x)}, "
                                             f"got {text}")
        return value

    return parse


def add_images(parser: argparse._ActionsContainer, required: bool = True, short: bool = False,
               help: str = "folder of <Case>_0000.nii.gz CT images") -> None:
    names = ("-i", "--images") if short else ("--images",)
    parser.add_argument(*names, type=Path, required=required, metavar="IMAGES_DIR", help=help)


def add_labels(parser: argparse._ActionsContainer, required: bool = True,
               help: str = "folder of <Case>.nii.gz label maps (the ground truth)") -> None:
    parser.add_argument("--labels", type=Path, required=required, metavar="LABELS_DIR", help=help)


def add_out(parser: argparse._ActionsContainer, help: str, required: bool = True, short: bool = False) -> None:
    names = ("-o", "--out") if short else ("--out",)
    parser.add_argument(*names, type=Path, required=required, metavar="OUT_DIR", help=help)


def add_cases(parser: argparse._ActionsContainer) -> None:
    parser.add_argument("--cases", default="*", metavar="GLOB",
                        help="only cases whose id (or image file name) matches this glob (default: all)")


def _profile(text: str) -> Any:
    from challenge.profile import ProfileError, load

    try:
        return load(text)
    except ProfileError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"--profile {text}: ")) from None


def add_profile(parser: argparse._ActionsContainer) -> None:
    """``--profile NAME|PATH``: the challenge profile (challenge.profile), parsed into a Profile; default flare22."""
    from challenge.profile import DEFAULT, shipped

    parser.add_argument("--profile", type=_profile, default=DEFAULT, metavar="NAME|PATH",
                        help=f"the challenge profile: {', '.join(shipped())}, or a .toml file of your own "
                             f"(default {DEFAULT}; docs/profiles.md)")


def add_cohorts(parser: argparse._ActionsContainer) -> None:
    """``--cohorts FILE``: a CSV ``Name,cohort`` (evaluator.cohorts)."""
    parser.add_argument("--cohorts", type=Path, metavar="CSV",
                        help="a CSV file Name,cohort: results per cohort too (every case must be listed)")


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="only errors")
    group.add_argument("-v", "--verbose", action="store_true", help="the harness's own debug lines too")


def configure_logging(args: argparse.Namespace, default: int = logging.INFO, fmt: str = "%(message)s",
                      datefmt: str | None = None) -> None:
    """Log the harness's packages at ``default`` (ERROR with ``-q``, DEBUG with ``-v``) and every other
    library at WARNING, so that ``-v`` never floods the console with, say, matplotlib's font search.
    Call it once, in ``main()``."""
    level = logging.ERROR if getattr(args, "quiet", False) else (
        logging.DEBUG if getattr(args, "verbose", False) else default)
    logging.basicConfig(level=max(level, logging.WARNING), format=fmt, datefmt=datefmt, stream=sys.stderr, force=True)
    for package in PACKAGES:
        logging.getLogger(package).setLevel(level)


def require_folder(parser: argparse.ArgumentParser, folder: Path | None, flag: str) -> None:
    """One-line error (exit 2) unless ``folder`` is an existing folder; None is left to ``required``."""
    if folder is not None and not folder.is_dir():
        parser.error(f"{flag} {folder}: no such folder")


# Errors of the host's disks: a command that meets one while writing its results stops with exit code 3.
HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


def _interrupted(signum: int, frame: object) -> None:
    """SIGINT or SIGTERM: raise KeyboardInterrupt once; further signals are ignored, so that the clean-up
    (containers, temporary folders, the run record) is never cut short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_command(prog: str, body: Callable[[], int], resume_hint: str = "rerun the same command") -> int:
    """Run a command's ``body`` under the exit-code table (challenge.exitcodes): Ctrl-C or SIGTERM gives one
    line and 130 once ``body`` has cleaned up; a HostFault, or a full or failing disk, gives one line and 3.
    ``resume_hint`` says how to finish (e.g. "rerun with --resume")."""
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {resume_hint} to finish", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except HostFault as err:
        print(f"{prog}: host fault: {err}; {resume_hint} once it is fixed", file=sys.stderr)
        return ExitCode.HOST_FAULT
    except OSError as err:
        if err.errno not in HOST_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: host fault: {where}{err.strerror}; {resume_hint} once it is fixed", file=sys.stderr)
        return ExitCode.HOST_FAULT
