"""``flare-monitor`` / ``python -m resource_monitor``: run a submission once per case and measure it."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

from challenge.cli import (
    Parser,
    add_cases,
    add_images,
    add_profile,
    add_verbosity,
    bounded,
    configure_logging,
    require_folder,
    run_command,
)
from challenge.exitcodes import ExitCode, for_failures
from challenge.teams import TeamNameError, check_team
from resource_monitor.guard import MIB, DiskLimits
from resource_monitor.hints import explain

_positive = bounded(float, low=0, strict_low=True)

EPILOG = """\
For each <Case>_0000.nii.gz in IMAGES_DIR (sorted), a fresh input folder holding only that file is
mounted read-only at /workspace/inputs and a fresh output folder at /workspace/outputs, and the image
runs `/bin/bash -c "sh predict.sh"` sandboxed: no network, all capabilities dropped,
no-new-privileges, pids/memory/shm limits, optional CPU quota, killed after --timeout.

Writes RESULTS_DIR/<team>/: outputs/<Case>.nii.gz, cases/<Case>.json (+ .log), plots/<Case>.png,
efficiency.csv (official FLARE22 figures), efficiency_accurate.csv (per-container figures), run.json.

Examples:
  python -m resource_monitor run --image flare-predictor:latest --images data/images --results out/results
  python -m resource_monitor run --archive teams/baseline.tar.gz --images data/images --results out/results
  python -m resource_monitor run --command "python -m predictor -i {inputs} -o {outputs}" \\
      --team local --images data/images --results out/results        # no Docker: a host command per case

Limits while a case runs: --max-output-mib to /workspace/outputs, --max-layer-mib inside the container's
own file system; a case over one is stopped at once ("error: wrote more than N MiB to ...").

Exit codes: 0 every case ok, 1 some case not ok (each one printed), 2 bad arguments, a bad archive or no
image, 3 a host fault (no space in RESULTS_DIR, the engine gone, the image removed under the run: the case
in progress is left unfinished), 130 interrupted (Ctrl-C or SIGTERM; its container and temporary folder
are removed). After 3 or 130, rerun with --resume.
"""


AUTO_GPU = -1  # --gpu auto: 0 if NVML sees a GPU, else none


def _size(text: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)?[bkmg]?", text.lower()):
        raise argparse.ArgumentTypeError(f"not a size like 28g or 512m: {text!r}")
    return text.lower()


def _gpu(text: str) -> int | None:
    if text.lower() == "none":
        return None
    if text.lower() == "auto":
        return AUTO_GPU
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a GPU index, 'auto' or 'none', got {text!r}")
    return int(text)


_mib = bounded(int, low=1, what="a size in MiB must be")


def _user(text: str) -> str:
    if not re.fullmatch(r"\d+(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected UID or UID:GID (numbers), got {text!r}")
    return text


def _team(text: str) -> str:
    try:
        return check_team(text)
    except TeamNameError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """How each case runs: the options of ``flare-monitor run``, which the organizer's commands add too,
    so that their defaults and validation are the same."""
    g = parser.add_argument_group("how each case runs")
    g.add_argument("--gpu", type=_gpu, default=AUTO_GPU, metavar="INDEX|auto|none",
                   help="GPU index for docker and NVML (default auto: 0 if an NVIDIA GPU is present, else none)")
    add_profile(g)
    g.add_argument("--timeout", type=_positive, help="seconds per case (default: the profile's; flare22 3600)")
    g.add_argument("--interval", type=_positive, help="sampling period (default: the profile's; flare22 0.1 s)")
    g.add_argument("--memory", type=_size,
                   help="container memory limit, no swap (default: the profile's; flare22 28g)")
    g.add_argument("--shm-size", type=_size, help="container /dev/shm size (default: the profile's; flare22 28g)")
    g.add_argument("--cpus", type=_positive,
                   help="CPU quota in cores (default: the profile's; flare22 none); local mode: the command is "
                        "pinned to that many cores")
    add_cases(g)
    g.add_argument("--writable-inputs", action="store_true", help="mount the per-case input copy read-write")
    g.add_argument("--user", type=_user, metavar="UID:GID",
                   help="run the container as this user (default: the image's own user)")
    g.add_argument("--read-only-root", action="store_true",
                   help="make the container's root file system read-only, with a tmpfs /tmp of --max-layer-mib "
                        "(default off: docs/experiments/sandbox-compat.md)")
    g.add_argument("--max-output-mib", type=_mib, default=DiskLimits.output_bytes // MIB, metavar="MIB",
                   help="stop a case that writes more than this to /workspace/outputs (default 1024)")
    g.add_argument("--max-layer-mib", type=_mib, default=DiskLimits.layer_bytes // MIB, metavar="MIB",
                   help="stop a container that writes more than this inside its own file system, /tmp included "
                        "(default 4096)")
    g.add_argument("--no-plots", action="store_true", help="skip the per-case PNGs")


def run_settings(args: argparse.Namespace, *, images: Path, results: Path, team: str = "",
                 image: str | None = None, command: str | None = None, resume: bool = False, fresh: bool = False):
    """The :class:`RunSettings` of the options :func:`add_run_options` added."""
    from resource_monitor.gpu import default_gpu_index
    from resource_monitor.settings import RunSettings

    profile, box = args.profile, args.profile.container
    # A profile without a GPU (a CPU track): none requested, none sampled.
    gpu = None if not box.gpu else default_gpu_index() if args.gpu == AUTO_GPU else args.gpu
    limits = DiskLimits(output_bytes=args.max_output_mib * MIB, layer_bytes=args.max_layer_mib * MIB)
    return RunSettings(inputs=images, results=results, team=team, image=image, command=command, gpu=gpu,
                       timeout_s=args.timeout or box.timeout_s,
                       interval_s=args.interval or profile.efficiency.interval_s,
                       memory=args.memory or box.memory, shm_size=args.shm_size or box.shm_size,
                       cpus=args.cpus or box.cpus or None, cases_glob=args.cases,
                       writable_inputs=args.writable_inputs, user=args.user, read_only_root=args.read_only_root,
                       resume=resume, fresh=fresh, limits=limits, plots=not args.no_plots, profile=profile)


def check_run_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line errors (exit 2) for run options this host or the profile cannot honour: a CPU quota above the
    host's cores, a GPU index under a profile without a GPU."""
    box = args.profile.container
    cpus = args.cpus or box.cpus
    if cpus and cpus > (os.cpu_count() or 1):
        parser.error(f"--cpus {cpus:g} (profile {args.profile.name}: {box.cpus:g}): this host has only "
                     f"{os.cpu_count()} cores; give a smaller --cpus")
    if not box.gpu and args.gpu not in (None, AUTO_GPU):
        parser.error(f"--gpu {args.gpu}: profile {args.profile.name} is a track without a GPU")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="flare-monitor", description="FLARE22 resource monitor: run and measure a submission.",
                    epilog="Run `python -m resource_monitor run --help` for the details.")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    p = sub.add_parser("run", help="run a submission on every case", description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="a local image NAME[:TAG]")
    what.add_argument("--archive", type=Path, help="a `docker save` archive TEAM.tar.gz holding TEAM:latest")
    what.add_argument("--command", help="local mode: a host command with {inputs} and {outputs}")
    add_images(p)
    p.add_argument("--results", required=True, type=Path, metavar="RESULTS_DIR", help="results root")
    p.add_argument("--team", type=_team, help="team name (default: from the archive, the image's repository, "
                                              "or 'local')")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish the run in RESULTS_DIR/<team>: its finished cases are kept, its run id too")
    again.add_argument("--fresh", action="store_true",
                       help="remove RESULTS_DIR/<team>'s earlier results first (without --resume or --fresh, a "
                            "team folder holding a run is refused)")
    add_run_options(p)
    add_verbosity(p)
    p.rename("--inputs", "--images")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args, default=logging.WARNING, fmt="%(levelname)s %(message)s")
    from resource_monitor.monitor import MonitorError, select_cases

    require_folder(parser, args.images, "--images")
    check_run_options(parser, args)
    if args.archive is not None and not args.archive.is_file():
        parser.error(f"--archive {args.archive}: no such file")
    try:
        args.results.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=args.results).close()
    except OSError as err:
        parser.error(f"--results {args.results}: not writable ({err.strerror})")
    try:
        select_cases(args.images, args.cases)
    except MonitorError as err:
        parser.error(str(err))
    client = None if args.command else docker_client(parser)
    return run_command("flare-monitor", lambda: _run(parser, args, client), resume_hint="rerun with --resume")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, client) -> int:
    from resource_monitor.monitor import MonitorError, load_archive, run_team

    image = args.image
    try:
        if args.archive is not None:
            team, image = load_archive(client, args.archive)
            args.team = args.team or team
        team = args.team or ("local" if args.command else _team_from_image(parser, image))
        settings = run_settings(args, images=args.images, results=args.results, team=team, image=image,
                                command=args.command, resume=args.resume, fresh=args.fresh)
        result = run_team(settings, client)
    except MonitorError as err:
        print(f"flare-monitor: error: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    for failure in result.failed:
        lines = explain(failure.case, failure.status, failure.log_tail)
        print("\n".join([f"flare-monitor: not ok: {lines[0]}", *lines[1:]]), file=sys.stderr)
    print(result.team.efficiency_csv)
    return for_failures(len(result.failed))


def _team_from_image(parser: argparse.ArgumentParser, image: str) -> str:
    from challenge.teams import team_from_image

    try:
        return team_from_image(image)
    except TeamNameError as err:
        parser.error(f"--image {image}: {err}; give --team")


def docker_client(parser: argparse.ArgumentParser):
    """A client of the Docker engine that answers, or a one-line argument error (exit 2)."""
    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as err:  # noqa: BLE001 - any failure means no engine
        parser.error(f"no Docker engine answers ({str(err).splitlines()[0][:150]}); run docker/engine.sh, "
                     "or use --command for local mode")
