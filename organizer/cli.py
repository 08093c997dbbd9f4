"""``flare-challenge`` / ``python -m organizer``: ``challenge``, the organizer's whole chain in one command, and
``check``, a team's self-check of its submission."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from challenge.cli import (
    Parser,
    add_cohorts,
    add_images,
    add_labels,
    add_out,
    add_verbosity,
    bounded,
    configure_logging,
    require_folder,
    run_command,
)
from challenge.cluster import ClusterError, add_cluster_options, cluster_spec
from challenge.exitcodes import ExitCode, for_failures
from challenge.teams import TeamNameError, check_team

log = logging.getLogger("organizer")

EPILOG = """\
Loads every TEAM.tar.gz in TEAMS_DIR (each must hold TEAM:latest), runs it once per case in a sandboxed
container while sampling GPU memory, CPU and RAM (resource_monitor), scores the outputs against
LABELS_DIR (evaluator, FLARE22 DSC and NSD), ranks the teams with FLARE22's rank-then-aggregate scheme,
and writes OUT_DIR/results/<team>/... and OUT_DIR/leaderboard/index.html. A team whose image fails to
load or crashes on every case is ranked last with its status; the run goes on.

Without Docker, --local NAME=COMMAND runs a host command per case instead ({inputs}, {outputs}).

On a cluster: --scheduler ADDRESS or --cluster local:N runs the teams on the cluster's GPU workers, after
a calibration of every worker (docs/scale.md).

Rerunning: --resume finishes the run in OUT_DIR (its finished cases are kept; an archive whose image the
engine holds already is not loaded again); --fresh starts over; without either, an OUT_DIR holding a run
is refused.

Exit codes: 0 no case penalised, 1 some team's case penalised (the leaderboard is written all the same),
2 bad arguments, 3 a host fault (no space, the engine gone: never a team's result), 130 interrupted
(Ctrl-C or SIGTERM; containers and temporary folders removed): then rerun with --resume (docs/cli.md).

Examples:
  python -m organizer challenge --teams teams/ --images data/images --labels data/labels --out out/challenge
  python -m organizer challenge --local "baseline=python -m predictor -i {inputs} -o {outputs}" \\
      --images data/images --labels data/labels --out out/challenge
"""


def _local(text: str) -> tuple[str, str]:
    name, sep, command = text.partition("=")
    if not sep or not name.strip() or not command.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=COMMAND, got {text!r}")
    try:
        return check_team(name.strip().lower()), command.strip()
    except TeamNameError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    from evaluator.cli import add_ranking_options, add_scoring_options
    from resource_monitor.cli import add_run_options

    parser = Parser(prog="flare-challenge", description="Run a FLARE22-style challenge end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    p = sub.add_parser("challenge", help="archives -> runs -> scores -> leaderboard", epilog=EPILOG,
                       description="Run every team on every case, score, rank and report.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teams", type=Path, metavar="TEAMS_DIR", help="folder of TEAM.tar.gz docker archives")
    p.add_argument("--local", type=_local, action="append", default=[], metavar="NAME=COMMAND",
                   help="a team run as a host command (repeatable)")
    add_images(p, required=False, help="folder of <Case>_0000.nii.gz CT images (required)")
    add_labels(p)
    add_out(p, help="results/ and leaderboard/ go here")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="finish the run in OUT_DIR: finished cases kept, archives already loaded not loaded again")
    again.add_argument("--fresh", action="store_true",
                       help="empty OUT_DIR's earlier run first (without --resume or --fresh it is refused)")
    add_run_options(p)
    add_scoring_options(p)
    add_ranking_options(p)
    add_cohorts(p)
    add_cluster_options(p)
    c = p.add_argument_group("on a cluster (docs/scale.md)")
    c.add_argument("--calibration-tolerance", type=bounded(float, low=0, strict_low=True), default=0.10,
                   metavar="FRACTION", help="flag a worker whose calibration time is this far off the median "
                                            "(default 0.10)")
    c.add_argument("--strict-hosts", action="store_true", help="give no team to a flagged worker")
    c.add_argument("--calibration-image", default="flare-base:bookworm", metavar="IMAGE",
                   help="the image whose python3 runs the calibration load on every worker's engine "
                        "(default flare-base:bookworm; with only --local teams, a host process)")
    add_verbosity(p)
    p.rename("--gt", "--labels")
    _add_check(sub)
    return parser


CHECK_EPILOG = """\
Runs the submission on every <Case>_0000.nii.gz of IMAGES_DIR exactly as the organizers' run does (the
same sandboxed container, limits and case folders: `python -m resource_monitor run`), then checks each
output against its input: the name (<Case>.nii.gz), a readable 3D NIfTI on exactly the input's grid
(size, spacing, origin, direction), label values 0..13 (0..14 under --profile flare23; uint8 expected),
and with --labels its DSC and NSD. One verdict line per case; a failed run also shows the last lines of
its log and a hint when it matches a sandbox rule (read-only inputs, no network, sh not bash, no GPU, memory, time).

Exit codes: 0 every case passed, 1 some case failed (so it can gate CI), 2 bad arguments or a refused
archive, 3 a host fault, 130 interrupted (docs/cli.md). --junit FILE writes a JUnit XML report.

Examples:
  python -m organizer check --archive myteam.tar.gz --images samples/images --labels samples/labels
  python -m organizer check --image myteam:latest --images samples/images --junit report.xml --timeout 300
"""


def _add_check(sub: argparse._SubParsersAction) -> None:
    from evaluator.cli import add_scoring_options
    from resource_monitor.cli import add_run_options

    p = sub.add_parser("check", help="a team's self-check: run as the organizers do, validate every output",
                       description="Check a submission before sending it.", epilog=CHECK_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--archive", type=Path, help="the archive to submit, TEAM.tar.gz holding TEAM:latest")
    what.add_argument("--image", help="a local image NAME[:TAG]")
    add_images(p, help="folder of sample <Case>_0000.nii.gz CT images")
    add_labels(p, required=False, help="folder of their <Case>.nii.gz ground truth: adds DSC and NSD")
    add_out(p, required=False, help="where the run's results go (default flare-check)")
    p.add_argument("--team", type=_team, help="team name (default: from the archive or the image)")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report (one test per case)")
    add_run_options(p)
    add_scoring_options(p)
    add_verbosity(p)
    p.rename("--inputs", "--images")
    p.set_defaults(out=Path("flare-check"))


def _team(text: str) -> str:
    try:
        return check_team(text)
    except TeamNameError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main_check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``organizer check``: the run, the verdicts, the exit code."""
    from resource_monitor.cli import check_run_options, docker_client

    require_folder(parser, args.images, "--images")
    require_folder(parser, args.labels, "--labels")
    if args.archive is not None and not args.archive.is_file():
        parser.error(f"--archive {args.archive}: no such file")
    check_run_options(parser, args)
    client = docker_client(parser)
    return run_command("flare-check", lambda: _check(args, client), resume_hint="rerun the same command")


def _check(args: argparse.Namespace, client) -> int:
    from challenge.teams import team_from_image
    from organizer.check import CheckSettings, run_check
    from resource_monitor.cli import run_settings
    from resource_monitor.monitor import MonitorError, load_archive

    try:
        image = args.image
        team = args.team
        if args.archive is not None:
            name, image = load_archive(client, args.archive)
            team = team or name
        team = team or team_from_image(image)
        run = run_settings(args, images=args.images, results=args.out, team=team, image=image, fresh=True)
        verdicts = run_check(CheckSettings(run, args.labels, args.junit, args.mode), client)
    except (MonitorError, TeamNameError) as err:
        print(f"flare-check: error: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    for verdict in verdicts:
        print("\n".join(verdict.lines()), flush=True)
    failed = sum(not v.passed for v in verdicts)
    print(f"flare-check: {len(verdicts) - failed} of {len(verdicts)} case(s) passed"
          + (f"; JUnit report {args.junit}" if args.junit else ""))
    return for_failures(failed)


def _old_cases_folder(args: argparse.Namespace) -> None:
    """Before the shared vocabulary, ``--cases`` was the image folder; it is a glob now. A ``--cases`` that
    names a folder, given without ``--images``, is taken as the old spelling (with a warning)."""
    if args.images is None and Path(args.cases).is_dir():
        print("flare-challenge: warning: --cases DIR is deprecated; use --images DIR (--cases is a glob now)",
              file=sys.stderr)
        args.images, args.cases = Path(args.cases), "*"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args, default=logging.WARNING, fmt="%(levelname)s %(message)s")
    if args.command == "check":
        return main_check(parser, args)
    from challenge.cases import list_images
    from evaluator.cli import leaderboard_settings
    from evaluator.cohorts import read_cohorts
    from evaluator.leaderboard import check_ground_truth
    from organizer.challenge_run import ChallengeSettings, find_archives, prepare
    from resource_monitor.cli import check_run_options, run_settings

    _old_cases_folder(args)
    if args.images is None:
        parser.error("the following arguments are required: --images")
    if args.teams is None and not args.local:
        parser.error("give --teams TEAMS_DIR and/or --local NAME=COMMAND")
    for folder, flag in ((args.images, "--images"), (args.labels, "--labels"), (args.teams, "--teams")):
        require_folder(parser, folder, flag)
    if not list_images(args.images):
        parser.error(f"--images {args.images}: no <Case>_0000.nii.gz images")
    check_run_options(parser, args)
    try:
        cases = check_ground_truth(args.labels, args.max_voxels)  # before hours of runs, not after
        if args.cohorts is not None:
            read_cohorts(args.cohorts, cases)
    except ValueError as err:
        parser.error(str(err))
    if args.teams is not None and not find_archives(args.teams) and not args.local:
        parser.error(f"--teams {args.teams}: no .tar.gz/.tar archives")
    monitor = run_settings(args, images=args.images, results=args.out / "results")
    settings = ChallengeSettings(images=args.images, labels=args.labels, out=args.out, teams=args.teams,
                                 local=dict(args.local), monitor=monitor,
                                 leaderboard=leaderboard_settings(args),
                                 resume=args.resume, fresh=args.fresh, cluster=cluster_spec(args),
                                 strict_hosts=args.strict_hosts, tolerance=args.calibration_tolerance,
                                 calibration_image=args.calibration_image)
    try:
        record = prepare(settings)
    except ValueError as err:
        parser.error(str(err))
    return run_command("flare-challenge", lambda: _run(settings, record), resume_hint="rerun with --resume")


def _run(settings, record) -> int:
    from organizer.challenge_run import run_challenge

    try:
        published = run_challenge(settings, record=record)
    except ClusterError as err:
        print(f"flare-challenge: error: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    for line in published.penalised:
        log.warning("penalised: %s", line)
    print(f"leaderboard: {published.index}")
    return for_failures(len(published.penalised))


if __name__ == "__main__":
    sys.exit(main())
