"""What every command-line tool of the harness shares: one-line argument errors with exit code 2, and
typed, bounded number arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def bounded(kind: type = float, low: float | None = None, high: float | None = None, what: str = "",
            strict_low: bool = False) -> Callable[[str], float | int]:
    """An argparse ``type=`` that parses ``kind`` and checks low <= value <= high (low < value if strict)."""
    name = "an integer" if kind is int else "a number"

    def parse(text: str):
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
