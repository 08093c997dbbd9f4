"""Team names: one rule for the monitor, the organizer, the ranking and ``docker/save_submission.sh``.

A team name is FLARE's derivation from the archive's file name (up to the first dot, in lower case:
``Team-A.tar.gz`` -> ``team-a``), and must be a Docker repository name component
(``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*``) of at most 64 characters. So a name is always a usable image
tag (``<team>:latest``), container name part and folder name: it can never be a path (no ``/``, no
``..``, no leading dot), hold spaces, or reach matplotlib as markup.

``python -m challenge.teams NAME`` prints the team name of NAME (a name or an archive file name) or
exits 2 with one line: the shell scripts use it so that the rule is written once.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from challenge.exitcodes import ExitCode

MAX_LENGTH = 64
PATTERN = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class TeamNameError(ValueError):
    """A name that is not a valid team name; the message is one line and names it."""


def check_team(name: str) -> str:
    """``name`` itself if it is a valid team name, else TeamNameError saying why."""
    if not name:
        raise TeamNameError("the team name is empty")
    if len(name) > MAX_LENGTH:
        raise TeamNameError(f"team name {name[:MAX_LENGTH]!r}... is longer than {MAX_LENGTH} characters")
    if not PATTERN.fullmatch(name):
        raise TeamNameError(f"team name {name!r} must be lower-case letters and digits, joined by single "
                            "'.', '_' or '__', or dashes (a Docker name component)")
    return name


def team_from_archive(archive: str | Path) -> str:
    """The team name of an archive file (``Team-A.tar.gz`` -> ``team-a``); TeamNameError naming the file."""
    filename = Path(archive).name
    try:
        return check_team(filename.split(".")[0].lower())
    except TeamNameError as err:
        raise TeamNameError(f"{filename}: {err}") from None


def team_from_image(image: str) -> str:
    """The team name of an image reference (``registry/team:tag`` -> ``team``)."""
    return check_team(image.rsplit("/", 1)[-1].split("@")[0].split(":")[0].lower())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m challenge.teams NAME|ARCHIVE", file=sys.stderr)
        return ExitCode.BAD_INPUT
    try:
        print(team_from_archive(args[0]))
    except TeamNameError as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    return ExitCode.OK


if __name__ == "__main__":
    raise SystemExit(main())
