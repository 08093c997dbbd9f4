"""``flare-evaluate`` / ``python -m evaluator``: FLARE22 DSC and NSD for a prediction folder (``score``),
and the leaderboard of a results folder (``rank``). Subcommands register themselves in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from challenge.cli import (
    Parser,
    add_cohorts,
    add_labels,
    add_out,
    add_profile,
    add_verbosity,
    bounded,
    configure_logging,
    require_folder,
    run_command,
)
from challenge.cluster import ClusterError, add_cluster_options, cluster_spec, dask_client
from challenge.exitcodes import ExitCode, for_failures

_workers = bounded(int, low=1)

log = logging.getLogger("evaluator")

SCORE_EPILOG = """\
Reads GT_DIR/<Case>.nii.gz (label maps) and PRED_DIR/<Case>.nii.gz (predictions); writes
OUT_DIR/metrics.csv (one row per GT case: Name, <Organ>_DSC x 13, <Organ>_NSD x 13, DSC_mean,
NSD_mean, status) and OUT_DIR/summary.json (per-organ mean/median/std, counts by status, versions).

Every GT case gets a row: a missing prediction is `missing`, an unreadable or wrongly shaped one
`invalid: <reason>`; both score 0 for organs present in the GT (1 for organs absent from it).
Exit codes: 0 every case scored ok, 1 some case missing, invalid or in error (the files are written all
the same), 2 bad arguments, 3 a host fault, 130 interrupted (docs/cli.md).

Where: by default a process pool on this host (--workers); with --cluster local:N a Dask LocalCluster of N
worker processes, with --scheduler ADDRESS the workers of an existing Dask scheduler. Only the paths travel:
the workers read GT_DIR and PRED_DIR themselves, so they must see them at the same paths (a shared file
system). The numbers are the same bit for bit wherever they are computed (docs/scale.md).

Modes:
  flare22  the official FLARE22 numbers (default): aorta, IVC and esophagus cut to GT slices
           [min, max) as the official code does; header mismatches and values outside 0..13
           give a warning in `status` and are scored as the official code scores them.
  strict   the same, but the cut is [min, max] and such predictions are `invalid`.

Examples:
  python -m evaluator score --gt data/labels --pred results/team/outputs --out results/team
  python -m evaluator score --gt data/labels --pred preds --out scores --mode strict --workers 2
  python -m evaluator score --gt /shared/labels --pred /shared/preds --out scores --scheduler tcp://head:8786
"""


def _add_score(subparsers: argparse._SubParsersAction) -> None:

    p = subparsers.add_parser("score", help="DSC and NSD per organ for a prediction folder",
                              description="Score a prediction folder against a ground-truth folder, FLARE22 style.",
                              epilog=SCORE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, type=Path, metavar="GT_DIR", help="folder of <Case>.nii.gz label maps")
    p.add_argument("--pred", required=True, type=Path, metavar="PRED_DIR", help="folder of <Case>.nii.gz predictions")
    add_out(p, help="where metrics.csv and summary.json go")
    add_scoring_options(p)
    add_profile(p)
    add_cohorts(p)
    add_cluster_options(p)
    add_verbosity(p)
    p.set_defaults(run=_run_score, parser=p)


def _writable(out: Path) -> str | None:
    """None if ``out`` can be created and written, else a one-line reason."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe."):
            pass
    except OSError as err:
        return f"--out {out}: not writable ({err.strerror or type(err).__name__})"
    return None


def _run_score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from challenge.cases import list_labels
    from evaluator.cohorts import read_cohorts
    from evaluator.scoring import MissingPrediction, score_folder, status_kind

    require_folder(parser, args.gt, "--gt")
    require_folder(parser, args.pred, "--pred")
    if not list_labels(args.gt):
        parser.error(f"--gt {args.gt}: no <Case>.nii.gz label maps in it")
    problem = _writable(args.out)
    if problem:
        parser.error(problem)
    spec = cluster_spec(args)
    try:
        check_recorded_profile(args.profile, args.pred, args.out)
        cohorts = read_cohorts(args.cohorts, list_labels(args.gt)) if args.cohorts is not None else None
        with dask_client(spec) as client:
            if client is not None:
                log.info("scoring on %s", spec.describe())
            table = score_folder(args.gt, args.pred, args.out, mode=args.mode, workers=args.workers,
                                 progress=not args.quiet, max_voxels=args.max_voxels, client=client,
                                 profile=args.profile, cohorts=cohorts)
    except MissingPrediction as err:
        print(f"flare-evaluate: not ok: {err}", file=sys.stderr)
        return ExitCode.CASE_FAILED
    except (FileNotFoundError, ValueError, ClusterError) as err:
        parser.error(str(err))
    kinds = table["status"].map(status_kind)
    counts = kinds.value_counts().to_dict()
    log.info("%d cases (%s): DSC_mean %.4f, NSD_mean %.4f -> %s", len(table),
             ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), table["DSC_mean"].mean(),
             table["NSD_mean"].mean(), args.out / "metrics.csv")
    failed = table[~kinds.isin(("ok", "warning"))]
    for name, status in zip(failed["Name"], failed["status"], strict=True):
        log.error("not ok: %s: %s", name, status)
    return for_failures(len(failed))


RANK_EPILOG = """\
Reads RESULTS_DIR/<team>/efficiency.csv (the resource monitor's flare22 figures) and
RESULTS_DIR/<team>/outputs/ for every team folder, scores the outputs into
RESULTS_DIR/<team>/metrics.csv when that file is missing, and ranks the teams over the GT cases with
FLARE22's rank-then-aggregate scheme: per case and metric the teams are ranked (ties take the minimum
rank), and a team's score is the mean over cases of (r_DSC + r_NSD + r_Time + 0.5 r_GPU + 0.5 r_CPU) / 4.
A case that did not run ok, or whose prediction is missing or invalid, takes the official worst values.
Also: bootstrap rank stability with Kendall's tau, and pairwise one-sided Wilcoxon tests (Holm).

Unscored teams are scored on this host's process pool (--workers), or with --cluster local:N / --scheduler
ADDRESS on a Dask cluster whose workers see LABELS_DIR and RESULTS_DIR at the same paths.

Writes LEADERBOARD_DIR/leaderboard.csv, leaderboard.json, case_ranks.csv, bootstrap_ranks.csv,
pairwise.csv and a self-contained index.html.

Exit codes: 0 no case penalised, 1 some case penalised (the leaderboard is written all the same),
2 bad arguments, 3 a host fault, 130 interrupted (docs/cli.md).

Example:
  python -m evaluator rank --results out/results --labels data/labels --out out/leaderboard
"""


def _add_rank(subparsers: argparse._SubParsersAction) -> None:

    p = subparsers.add_parser("rank", help="rank the teams of a results folder and write the report",
                              description="FLARE22 leaderboard from the monitor's results and the GT.",
                              epilog=RANK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, type=Path, metavar="RESULTS_DIR", help="one sub-folder per team")
    add_labels(p)
    add_out(p, help="where the leaderboard and its report go")
    add_scoring_options(p)
    add_profile(p)
    add_cohorts(p)
    add_cluster_options(p)
    add_ranking_options(p)
    add_verbosity(p)
    p.rename("--gt", "--labels")
    p.set_defaults(run=_run_rank, parser=p)


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """How predictions are scored: shared by ``evaluator score``, ``evaluator rank`` and ``organizer challenge``."""
    from challenge.nifti import MAX_VOXELS
    from evaluator.metrics import MODES

    g = parser.add_argument_group("scoring")
    g.add_argument("--mode", choices=tuple(MODES), default="flare22", help="flare22 (default) or strict")
    g.add_argument("--workers", type=_workers, default=os.cpu_count() or 1,
                   help="parallel scoring processes on this host (default: the number of cores); ignored with "
                        "--scheduler or --cluster, where the cluster's workers score")
    g.add_argument("--max-voxels", type=bounded(int, low=1), default=MAX_VOXELS, metavar="N",
                   help=f"the most voxels a GT label map may declare (default {MAX_VOXELS:,} = 512 x 512 x 2048); "
                        "predictions are bounded by their GT's shape")


def add_ranking_options(parser: argparse.ArgumentParser) -> None:
    """The ranking's options, shared by ``evaluator rank`` and ``organizer challenge``."""
    g = parser.add_argument_group("ranking")
    g.add_argument("--bootstrap", type=_workers, default=1000, help="bootstrap samples (default 1000)")
    g.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    g.add_argument("--title", metavar="TEXT",
                   help="the challenge's name on the report (default: the profile's title, e.g. 'FLARE22-style "
                        "challenge')")


def ranking_settings(args: argparse.Namespace):
    """The :class:`evaluator.ranking.RankingSettings` of :func:`add_ranking_options`'s options."""
    from evaluator.ranking import RankingSettings

    return RankingSettings(bootstrap_samples=args.bootstrap, seed=args.seed)


def leaderboard_settings(args: argparse.Namespace):
    """The :class:`evaluator.leaderboard.LeaderboardSettings` of the scoring, ranking, profile and cohort
    options (``evaluator rank`` and ``organizer challenge``)."""
    from evaluator.leaderboard import LeaderboardSettings

    return LeaderboardSettings(mode=args.mode, workers=args.workers, ranking=ranking_settings(args),
                               max_voxels=args.max_voxels, title=args.title or args.profile.title,
                               profile=args.profile, cohorts=args.cohorts)


def check_recorded_profile(profile, *folders: Path) -> None:
    """ProfileError (one line) when a team folder among ``folders`` (or the parent of one: ``--pred
    RESULTS/<team>/outputs``) holds a run.json made under another profile."""
    from challenge.profile import check_same
    from challenge.results import read_json

    for folder in folders:
        for candidate in (folder / "run.json", folder.parent / "run.json"):
            if candidate.is_file():
                try:
                    record = read_json(candidate)
                except (OSError, ValueError):
                    continue
                check_same(profile, record if isinstance(record, dict) else None, str(candidate))
                return


def _run_rank(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from evaluator.leaderboard import rank_results

    require_folder(parser, args.labels, "--labels")
    require_folder(parser, args.results, "--results")
    problem = _writable(args.out)
    if problem:
        parser.error(problem)
    settings = leaderboard_settings(args)
    try:
        with dask_client(cluster_spec(args)) as client:
            published = rank_results(args.results, args.labels, args.out, settings, client=client)
    except (ValueError, ClusterError) as err:
        parser.error(str(err))
    for line in published.penalised:
        log.warning("penalised: %s", line)
    print(published.index)
    return for_failures(len(published.penalised))


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_score, _add_rank]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="flare-evaluate", description="FLARE22 evaluation: official DSC and NSD, fast.",
                     epilog="Example:\n  python -m evaluator score --gt GT_DIR --pred PRED_DIR --out OUT_DIR\n"
                            "Run `python -m evaluator score --help` for the details.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    return run_command("flare-evaluate", lambda: args.run(args, args.parser))


if __name__ == "__main__":
    sys.exit(main())
