"""``python -m predictor.train`` (and the ``flare-train`` console script): the trainer's command line, kept
at this address. The code is the package ``predictor.training`` (its command line: ``predictor.training.cli``)."""

from predictor.training.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
