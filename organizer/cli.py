"""``flare-challenge`` / ``python -m organizer challenge``: the organizer's whole chain in one command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from challenge import rules
from challenge.cli import Parser

EPILOG = """\
Loads every TEAM.tar.gz in TEAMS_DIR (each must hold TEAM:latest), runs it once per case in a sandboxed
container while sampling GPU memory, CPU and RAM (resource_monitor), scores the outputs against GT_DIR
(evaluator, FLARE22 DSC and NSD), ranks the teams with FLARE22's rank-then-aggregate scheme, and writes
OUT_DIR/results/<team>/... and OUT_DIR/leaderboard/index.html. A team whose image fails to load or
crashes on every case is ranked last with its status; the run goes on.

Without Docker, --local NAME=COMMAND runs a host command per case instead ({inputs}, {outputs}).

Examples:
  python -m organizer challenge --teams teams/ --cases data/images --gt data/labels --out out/challenge
  python -m organizer challenge --local "baseline=python -m predictor -i {inputs} -o {outputs}" \\
      --cases data/images --gt data/labels --out out/challenge
"""


def _local(text: str) -> tuple[str, str]:
    name, sep, command = text.partition("=")
    if not sep or not name.strip() or not command.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=COMMAND, got {text!r}")
    return name.strip().lower(), command.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="flare-challenge", description="Run a FLARE22-style challenge end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    p = sub.add_parser("challenge", help="archives -> runs -> scores -> leaderboard", epilog=EPILOG,
                       description="Run every team on every case, score, rank and report.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teams", type=Path, metavar="TEAMS_DIR", help="folder of TEAM.tar.gz docker archives")
    p.add_argument("--local", type=_local, action="append", default=[], metavar="NAME=COMMAND",
                   help="a team run as a host command (repeatable)")
    p.add_argument("--cases", required=True, type=Path, metavar="IMAGES_DIR", help="<Case>_0000.nii.gz images")
    p.add_argument("--gt", required=True, type=Path, metavar="LABELS_DIR", help="<Case>.nii.gz labels")
    p.add_argument("--out", required=True, type=Path, metavar="OUT_DIR")
    p.add_argument("--timeout", type=float, default=rules.TIME_LIMIT_S, help="seconds per case (default 3600)")
    p.add_argument("--memory", default="28g", help="container memory limit (default 28g)")
    p.add_argument("--shm-size", default="28g", help="container shm size (default 28g)")
    p.add_argument("--cpus", type=float, help="CPU quota per container (cores)")
    p.add_argument("--gpu", default="auto", metavar="INDEX|none", help="GPU index (default: 0 if present)")
    p.add_argument("--mode", choices=("flare22", "strict"), default="flare22", help="scoring mode")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for rank stability")
    p.add_argument("--workers", type=int, help="scoring processes (default: all cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from challenge.cases import list_images, list_labels
    from evaluator.leaderboard import LeaderboardSettings
    from evaluator.ranking import RankingSettings
    from organizer.challenge_run import ChallengeSettings, find_archives, run_challenge
    from resource_monitor.gpu import default_gpu_index
    from resource_monitor.settings import RunSettings

    if args.teams is None and not args.local:
        parser.error("give --teams TEAMS_DIR and/or --local NAME=COMMAND")
    for folder, flag in ((args.cases, "--cases"), (args.gt, "--gt"), (args.teams, "--teams")):
        if folder is not None and not folder.is_dir():
            parser.error(f"{flag} {folder}: no such folder")
    if not list_images(args.cases):
        parser.error(f"--cases {args.cases}: no <Case>_0000.nii.gz images")
    if not list_labels(args.gt):
        parser.error(f"--gt {args.gt}: no <Case>.nii.gz labels")
    if args.teams is not None and not find_archives(args.teams) and not args.local:
        parser.error(f"--teams {args.teams}: no .tar.gz/.tar archives")
    if args.gpu == "auto":
        gpu = default_gpu_index()
    elif args.gpu == "none":
        gpu = None
    elif args.gpu.isdigit():
        gpu = int(args.gpu)
    else:
        parser.error(f"--gpu: expected an index, 'none' or 'auto', got {args.gpu!r}")
    monitor = RunSettings(inputs=args.cases, results=args.out, team="", gpu=gpu, timeout_s=args.timeout,
                          memory=args.memory, shm_size=args.shm_size, cpus=args.cpus)
    settings = ChallengeSettings(cases=args.cases, gt=args.gt, out=args.out, teams=args.teams,
                                 local=dict(args.local), monitor=monitor,
                                 leaderboard=LeaderboardSettings(args.mode, args.workers,
                                                                 RankingSettings(bootstrap_samples=args.bootstrap)))
    index = run_challenge(settings)
    print(f"leaderboard: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
