"""The FLARE22 evaluator: official DSC and NSD per organ for a prediction folder, fast.

Python API (used by the leaderboard): :func:`score_case` (one file pair, a plain picklable function)
and :func:`score_folder` (a folder; writes metrics.csv and summary.json). CLI: ``python -m evaluator``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flare-harness")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "score_case", "score_folder"]


def __getattr__(name: str):
    # Lazy, so that `import evaluator.ranking` does not pay for the scoring stack.
    if name in ("score_case", "score_folder"):
        from evaluator import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module 'evaluator' has no attribute {name!r}")
