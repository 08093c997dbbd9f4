"""Where the work runs: the local process pool (the default), a Dask ``LocalCluster`` on this host
(``--cluster local:N``), or an existing Dask scheduler (``--scheduler ADDRESS``). The options are the same
on every command that spreads work (``evaluator score``, ``evaluator rank``, ``organizer challenge``).

Workers of a cluster that run team containers declare one ``GPU`` resource per GPU (``dask worker ...
--resources GPU=1 --nthreads 1``): a task that asks for ``GPU=1`` then has a worker's GPU to itself, so no
worker runs two containers at once. A ``local:N`` cluster gives each of its N workers ``GPU=1`` as a
logical resource (no GPU is needed to schedule), one thread and its own process. docs/scale.md.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class ClusterSpec:
    """``scheduler``: the address of an existing scheduler; ``local``: the number of workers of a
    LocalCluster to start here. At most one is set; neither: the local process pool."""

    scheduler: str | None = None
    local: int | None = None

    @property
    def wanted(self) -> bool:
        return self.scheduler is not None or self.local is not None

    def describe(self) -> str:
        if self.scheduler:
            return f"scheduler {self.scheduler}"
        return f"LocalCluster of {self.local} worker(s)" if self.local else "the local process pool"


class ClusterError(RuntimeError):
    """The cluster cannot be reached or started; the message is one line (exit code 2)."""


def _local(text: str) -> int:
    match = re.fullmatch(r"local:(\d+)", text)
    if not match or not 1 <= int(match.group(1)) <= 256:
        raise argparse.ArgumentTypeError(f"expected local:N with N workers (1..256), got {text!r}")
    return int(match.group(1))


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``--scheduler ADDRESS`` or ``--cluster local:N`` (mutually exclusive); without either, nothing changes."""
    g = parser.add_argument_group("where the work runs (default: this host's process pool)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--cluster", type=_local, metavar="local:N",
                       help="a Dask LocalCluster of N single-threaded worker processes on this host, each with "
                            "a logical GPU=1 resource (tests, one big host)")


def cluster_spec(args: argparse.Namespace) -> ClusterSpec:
    return ClusterSpec(getattr(args, "scheduler", None), getattr(args, "cluster", None))


@contextmanager
def dask_client(spec: ClusterSpec) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec`` (a LocalCluster started and closed here), or None for the local
    process pool. ClusterError (one line) when the scheduler does not answer within 10 s."""
    if not spec.wanted:
        yield None
        return
    import logging

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines would flood the console
    if spec.local:
        cluster = LocalCluster(n_workers=spec.local, threads_per_worker=1, processes=True, resources={"GPU": 1},
                               dashboard_address=":0", silence_logs=50)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(spec.scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as err:
        raise ClusterError(f"--scheduler {spec.scheduler}: no Dask scheduler answers "
                           f"({str(err).splitlines()[0][:150] if str(err) else type(err).__name__})") from None
    with client:
        yield client
