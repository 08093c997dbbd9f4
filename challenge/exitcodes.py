"""The exit codes of every command of the harness, in one table (docs/cli.md prints the same table).

=====  ===========  =====================================================================================
code   name         meaning
=====  ===========  =====================================================================================
0      OK           everything asked for was done, and every case succeeded
1      CASE_FAILED  the command finished and wrote its outputs, but at least one case failed (the run
                    went on with the others; each failure is named on the console and in the results)
2      BAD_INPUT    bad arguments or bad input found before anything ran; nothing was written
3      HOST_FAULT   the host failed, not a case: no space or an I/O error in the results, the Docker
                    engine or a scheduler gone; rerun with ``--resume`` once it is fixed
130    INTERRUPTED  Ctrl-C or SIGTERM; rerun with ``--resume`` to finish
=====  ===========  =====================================================================================

What "a case failed" means per command: ``predictor`` a scan it could not segment; ``resource_monitor
run`` a case whose run did not end ``ok``; ``organizer check`` a case that did not pass; ``evaluator
score`` a case that is ``missing``, ``invalid`` or ``error``; ``evaluator rank`` and ``organizer
challenge`` a team's case that was penalised (the leaderboard is written all the same);
``predictor.train`` a training run that failed.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CASE_FAILED = 1
    BAD_INPUT = 2
    HOST_FAULT = 3
    INTERRUPTED = 130


def for_failures(failed: int) -> ExitCode:
    """OK when ``failed`` is 0, else CASE_FAILED."""
    return ExitCode.CASE_FAILED if failed else ExitCode.OK


class HostFault(RuntimeError):
    """The host failed under a running command, not a case (no space or an I/O error in the results, the
    Docker engine gone, an image removed under the run): exit code 3. The message is one line naming
    what failed; the case in progress is left unfinished, so that ``--resume`` runs it again."""
