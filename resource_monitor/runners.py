"""What runs one case: a sandboxed container (:class:`DockerRunner`) or a host command
(:class:`LocalRunner`, for development and machines with no Docker). Both give the sampler a probe of
the target and return an :class:`Outcome`; nothing else in the monitor knows which one ran."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from challenge import rules
from resource_monitor.cgroups import Cgroup, cgroup_of
from resource_monitor.efficiency import Timeline
from resource_monitor.sampling import Sampler

log = logging.getLogger(__name__)
LABEL_RUN = "flare-harness.run"
LABEL_PID = "flare-harness.monitor-pid"
LABEL_HOST = "flare-harness.host"


@dataclass
class Outcome:
    exit_code: int | None
    timed_out: bool
    oom: bool
    log: str
    timeline: Timeline
    params: dict
    error: str | None = None  # the run could not start (e.g. the image is missing)
    cpu_total_s: float | None = None  # exact CPU core-seconds where the runner knows them
    extra: dict = field(default_factory=dict)


class CaseRunner(Protocol):
    def run(self, case: str, in_dir: Path, out_dir: Path, sampler: Sampler, timeout_s: float) -> Outcome: ...


def monitor_identity() -> str:
    """This monitor process as "pid:start-time": the container label that tells a live run from a crashed
    one, so that a reused PID is not mistaken for a live run."""
    me = psutil.Process()
    return f"{me.pid}:{me.create_time():.2f}"


def monitor_alive(identity: str) -> bool:
    """Whether the monitor process named by :func:`monitor_identity`'s string still runs on this host."""
    pid, _, started = identity.partition(":")
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except (ValueError, psutil.Error):
        return False


class CgroupProbe:
    """A container measured through its cgroup (member PIDs, CPU core-seconds, memory MiB)."""

    def __init__(self, cgroup: Cgroup):
        self.cgroup = cgroup

    def read(self) -> tuple[set[int], float | None, float | None]:
        return self.cgroup.pids(), self.cgroup.cpu_seconds(), self.cgroup.memory_mib()


class ProcessTreeProbe:
    """A host process and its descendants, through psutil. CPU time of children that already exited
    is kept from their last reading, so the total does not drop when a child ends."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self._last: dict[int, float] = {}

    def _tree(self) -> list[psutil.Process]:
        """The root and its descendants. /proc/<pid>/task/<tid>/children is read where the kernel has it:
        psutil's children() scans every process on the host, which tripled the sampling overhead."""
        try:
            procs, queue = [], [self.root.pid]
            while queue:
                pid = queue.pop()
                procs.append(psutil.Process(pid) if pid != self.root.pid else self.root)
                for task in os.scandir(f"/proc/{pid}/task"):
                    with open(f"{task.path}/children") as f:
                        queue += [int(c) for c in f.read().split()]
            return procs
        except (OSError, psutil.Error):
            return [self.root, *self.root.children(recursive=True)]

    def read(self) -> tuple[set[int], float | None, float | None]:
        pids, rss = set(), 0
        for proc in self._tree():
            try:
                with proc.oneshot():
                    t = proc.cpu_times()
                    rss += proc.memory_info().rss
                self._last[proc.pid] = t.user + t.system
                pids.add(proc.pid)
            except psutil.Error:
                continue
        return pids, sum(self._last.values()), rss / float(1 << 20)


class DockerRunner:
    """Runs ``IMAGE /bin/bash -c "sh predict.sh"`` with the case folders mounted, sandboxed:
    no network, all capabilities dropped, no-new-privileges, pids/memory/shm limits, optional CPU quota,
    read-only inputs; killed and removed after ``timeout_s``."""

    def __init__(self, client, image: str, run_id: str, settings):
        self.client, self.image, self.run_id, self.settings = client, image, run_id, settings

    def params(self, case: str, in_dir: Path, out_dir: Path) -> dict:
        s = self.settings
        params = {
            "image": self.image, "command": list(rules.CONTAINER_COMMAND),
            "name": f"flare-{s.team}-{case}-{self.run_id[:8]}".replace("/", "-")[:120],
            "network_mode": "none", "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
            "pids_limit": s.pids_limit, "mem_limit": s.memory, "memswap_limit": s.memory,
            "shm_size": s.shm_size, "privileged": False,
            "volumes": {str(in_dir): {"bind": rules.CONTAINER_INPUTS, "mode": "rw" if s.writable_inputs else "ro"},
                        str(out_dir): {"bind": rules.CONTAINER_OUTPUTS, "mode": "rw"}},
            "labels": {LABEL_RUN: self.run_id, LABEL_PID: monitor_identity(), LABEL_HOST: os.uname().nodename},
            # A chatty or hostile image cannot fill the host's disk with its log: one file, capped.
            "log_config": {"type": "json-file", "config": {"max-size": s.log_max_size, "max-file": "1"}},
        }
        if s.cpus:
            params["nano_cpus"] = int(s.cpus * 1e9)
        if s.gpu is not None:
            # Untested here (no host with both Docker and a GPU): `--gpus "device=<index>"` in SDK form.
            params["device_requests"] = [{"Driver": "", "DeviceIDs": [str(s.gpu)], "Capabilities": [["gpu"]]}]
        return params

    def run(self, case: str, in_dir: Path, out_dir: Path, sampler: Sampler, timeout_s: float) -> Outcome:
        import requests

        import docker

        params = self.params(case, in_dir, out_dir)
        sdk = dict(params)
        if "device_requests" in sdk:
            sdk["device_requests"] = [docker.types.DeviceRequest(
                device_ids=r["DeviceIDs"], capabilities=r["Capabilities"]) for r in sdk["device_requests"]]
        now = lambda: time.monotonic() - sampler.t0  # noqa: E731
        try:
            container = self.client.containers.create(detach=True, **sdk)
        except docker.errors.DockerException as err:
            return Outcome(None, False, False, "", Timeline(now(), now()), params, error=_one_line(err))
        created, timed_out, exit_code = now(), False, None
        try:
            container.start()
            started = now()
            container.reload()
            try:
                sampler.probe = CgroupProbe(cgroup_of(container.attrs["State"]["Pid"]))
            except (OSError, ValueError) as err:  # exited already, or an unknown cgroup layout
                log.debug("%s: no cgroup probe (%s)", case, err)
            try:
                exit_code = container.wait(timeout=max(timeout_s - now(), 0.1))["StatusCode"]
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                timed_out = True
                container.kill()
                container.wait(timeout=30)
            exited = now()
            container.reload()
            state = container.attrs["State"]
            oom = bool(state.get("OOMKilled"))
            exit_code = state.get("ExitCode", exit_code)
            text = container.logs(stdout=True, stderr=True).decode("utf-8", errors="replace")
            return Outcome(exit_code, timed_out, oom, text, Timeline(started, exited, created), params,
                           extra={"container_id": container.id})
        except docker.errors.DockerException as err:
            return Outcome(exit_code, timed_out, False, "", Timeline(now(), now()), params, error=_one_line(err))
        finally:
            sampler.probe = None
            try:
                container.remove(force=True)
            except docker.errors.DockerException as err:
                log.warning("%s: could not remove container %s (%s)", case, container.short_id, err)


class LocalRunner:
    """Runs a host command per case, e.g. ``python -m predictor -i {inputs} -o {outputs}``, in its own
    process group (killed whole on timeout). No sandbox: for development and hosts without Docker."""

    def __init__(self, command: str):
        self.command = command

    def run(self, case: str, in_dir: Path, out_dir: Path, sampler: Sampler, timeout_s: float) -> Outcome:
        # Plain replacement, not str.format: other braces in the command (a dict literal) stay as they are.
        argv = [a.replace("{inputs}", str(in_dir)).replace("{outputs}", str(out_dir))
                for a in shlex.split(self.command)]
        params = {"argv": argv, "timeout_s": timeout_s}
        now = lambda: time.monotonic() - sampler.t0  # noqa: E731
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The child's output goes to an unnamed temporary file (never a results file), read back at exit.
        with tempfile.TemporaryFile() as log_file:
            try:
                proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError as err:
                return Outcome(None, False, False, "", Timeline(now(), now()), params, error=_one_line(err))
            started = now()
            with contextlib.suppress(psutil.Error):
                sampler.probe = ProcessTreeProbe(proc.pid)
            timed_out = False
            try:
                proc.wait(timeout=max(timeout_s - now(), 0.1))
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            exited = now()
            sampler.probe = None
            log_file.seek(0)
            text = log_file.read().decode("utf-8", errors="replace")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        oom = proc.returncode == -signal.SIGKILL and not timed_out
        return Outcome(proc.returncode, timed_out, oom, text, Timeline(started, exited), params, cpu_total_s=cpu)


def _one_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]
