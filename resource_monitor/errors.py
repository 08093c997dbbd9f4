"""The monitor's two kinds of failure that are not a case's result (challenge.exitcodes):

- :class:`MonitorError`: the run cannot start because of its input (no cases, no image, a bad archive):
  one line, exit code 2 (BAD_INPUT), nothing run;
- :class:`HostFault`: the host failed under a running run (no space or an I/O error in the results, the
  Docker engine gone, the image removed under the run): one line, exit code 3 (HOST_FAULT). The case in
  progress is left unfinished, so ``--resume`` runs it again; a host fault is never a team's result.
"""

from __future__ import annotations

from challenge.exitcodes import HostFault

__all__ = ["HostFault", "MonitorError", "engine_gone", "one_line"]


class MonitorError(ValueError):
    """A run that cannot start (no cases, no image, a bad archive); the message is one line."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's text (its type's name when empty), at most ``limit``."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]


def engine_gone(err: BaseException) -> bool:
    """Whether ``err`` says the Docker engine cannot be reached (refused, reset, timed out, API gone)."""
    import docker
    import requests

    if isinstance(err, (requests.exceptions.RequestException, ConnectionError)):  # refused, reset, cut short
        return True
    if isinstance(err, docker.errors.DockerException) and not isinstance(err, docker.errors.APIError):
        text = str(err)
        return "Error while fetching server API version" in text or "Connection" in text
    return False
