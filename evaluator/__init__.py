"""The FLARE22 evaluator: official DSC and NSD per organ for a prediction folder, fast, and the
rank-then-aggregate leaderboard.

Python API: :func:`evaluator.scoring.score_case` (one file pair, a plain picklable function),
:func:`evaluator.scoring.score_folder` (a folder; writes metrics.csv and summary.json) and
:func:`evaluator.leaderboard.rank_results`. CLI: ``python -m evaluator``.
"""

from challenge import __version__

__all__ = ["__version__"]
