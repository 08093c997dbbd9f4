"""What runs one case: a sandboxed container (:class:`DockerRunner`) or a host command
(:class:`LocalRunner`, for development and machines with no Docker). Both give the sampler a probe of
the target and return an :class:`Outcome`; nothing else in the monitor knows which one ran."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
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
from resource_monitor.errors import HostFault, engine_gone, one_line
from resource_monitor.guard import MIB, DiskGuard, DiskLimits
from resource_monitor.sampling import Sampler
from resource_monitor.watchdog import Watchdog

log = logging.getLogger(__name__)
LABEL_RUN = "flare-harness.run"
LABEL_PID = "flare-harness.monitor-pid"
LABEL_HOST = "flare-harness.host"
DEADLINE_GRACE_S = 5.0  # the watchdog's margin past a case's timeout (it acts only once the monitor is dead)
OUTPUTS = "/workspace/outputs"


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


@dataclass
class CaseContext:
    """What a runner needs besides the case: the sampler, the time limit, the disk caps, the watchdog that
    enforces the deadline if the monitor dies, and the cap on the log kept."""

    sampler: Sampler
    timeout_s: float
    limits: DiskLimits = field(default_factory=DiskLimits)
    watchdog: Watchdog | None = None
    log_max_bytes: int = 50 * MIB

    def deadline(self) -> float:
        """The wall-clock time (epoch s) after which the watchdog stops the target, if the monitor died."""
        left = self.timeout_s - (time.monotonic() - self.sampler.t0)
        return time.time() + max(left, 0.0) + DEADLINE_GRACE_S


class CaseRunner(Protocol):
    def run(self, case: str, in_dir: Path, out_dir: Path, ctx: CaseContext) -> Outcome: ...


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
    read-only inputs, disk caps watched while it runs; killed and removed after ``timeout_s``.

    A failure of Docker itself (the engine gone, the image removed under the run, an API error around the
    container) raises HostFault: it is never the case's result. Only an image that cannot run the FLARE
    command at all (no ``/bin/bash``) is the case's ``error``."""

    def __init__(self, client, image: str, run_id: str, settings):
        self.client, self.image, self.run_id, self.settings = client, image, run_id, settings

    def params(self, case: str, in_dir: Path, out_dir: Path) -> dict:
        s = self.settings
        name = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"flare-{s.team}-{case}-{self.run_id[:8]}")[:120]
        params = {
            "image": self.image, "command": list(s.profile.container.command), "name": name,
            "network_mode": "none", "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
            "pids_limit": s.pids_limit, "mem_limit": s.memory, "memswap_limit": s.memory,
            "shm_size": s.shm_size, "privileged": False,
            "volumes": {str(in_dir): {"bind": rules.CONTAINER_INPUTS, "mode": "rw" if s.writable_inputs else "ro"},
                        str(out_dir): {"bind": rules.CONTAINER_OUTPUTS, "mode": "rw"}},
            "labels": {LABEL_RUN: self.run_id, LABEL_PID: monitor_identity(), LABEL_HOST: os.uname().nodename},
            # A chatty or hostile image cannot fill the host's disk with its log: one file, capped.
            "log_config": {"type": "json-file", "config": {"max-size": s.log_max_size, "max-file": "1"}},
        }
        if s.user:
            params["user"] = s.user
        if s.read_only_root:  # the tmpfs counts in the container's memory; exec: images run what they unpack
            params["read_only"] = True
            params["tmpfs"] = {"/tmp": f"rw,exec,nosuid,size={s.limits.layer_bytes // MIB}m"}
        if s.cpus:
            params["nano_cpus"] = int(s.cpus * 1e9)
        if s.gpu is not None:
            # Untested here (no host with both Docker and a GPU): `--gpus "device=<index>"` in SDK form.
            params["device_requests"] = [{"Driver": "", "DeviceIDs": [str(s.gpu)], "Capabilities": [["gpu"]]}]
        return params

    def _sdk(self, params: dict) -> dict:
        import docker

        sdk = dict(params)
        if "device_requests" in sdk:
            sdk["device_requests"] = [docker.types.DeviceRequest(
                device_ids=r["DeviceIDs"], capabilities=r["Capabilities"]) for r in sdk["device_requests"]]
        return sdk

    def run(self, case: str, in_dir: Path, out_dir: Path, ctx: CaseContext) -> Outcome:
        import docker

        params = self.params(case, in_dir, out_dir)
        try:
            container = self.client.containers.create(detach=True, **self._sdk(params))
        except docker.errors.ImageNotFound:
            raise HostFault(f"the image {self.image} is no longer in the Docker engine (removed under the run)"
                            ) from None
        except Exception as err:
            if isinstance(err, docker.errors.DockerException) or engine_gone(err):
                raise HostFault(f"cannot create the container of {case}: {one_line(err)}") from None
            raise
        created = time.monotonic() - ctx.sampler.t0
        if ctx.watchdog:
            ctx.watchdog.container(container.id, ctx.deadline())
        try:
            return self._run(container, case, out_dir, ctx, params, created)
        except Exception as err:
            if isinstance(err, docker.errors.DockerException) or engine_gone(err):
                raise HostFault(f"the Docker engine failed while {case} ran: {one_line(err)}") from None
            raise
        finally:
            self._remove(container, case, ctx)

    def _run(self, container, case: str, out_dir: Path, ctx: CaseContext, params: dict, created: float) -> Outcome:
        import docker

        now = lambda: time.monotonic() - ctx.sampler.t0  # noqa: E731
        try:
            container.start()
        except docker.errors.APIError as err:
            if not _cannot_run(err):
                raise
            return Outcome(None, False, False, "", Timeline(now(), now(), created), params,
                           error=f"the image cannot run {' '.join(self.settings.profile.container.command)!r}: "
                                 f"{one_line(err, 200)}")
        started = now()
        container.reload()
        try:
            ctx.sampler.probe = CgroupProbe(cgroup_of(container.attrs["State"]["Pid"]))
        except (OSError, ValueError) as err:  # exited already, or an unknown cgroup layout
            log.debug("%s: no cgroup probe (%s)", case, err)
        places = {OUTPUTS: (out_dir, ctx.limits.output_bytes)}
        upper = (container.attrs.get("GraphDriver") or {}).get("Data", {}).get("UpperDir")
        if upper and os.path.isdir(upper):
            places["the container's file system"] = (Path(upper), ctx.limits.layer_bytes)
        with DiskGuard(places, ctx.limits.entries, breach=lambda _: self._kill(container)) as guard:
            exit_code, timed_out = self._wait(container, case, ctx)
        exited = now()
        ctx.sampler.probe = None
        container.reload()
        state = container.attrs["State"]
        text = _tail_bytes(container.logs(stdout=True, stderr=True), ctx.log_max_bytes)
        return Outcome(state.get("ExitCode", exit_code), timed_out, bool(state.get("OOMKilled")), text,
                       Timeline(started, exited, created), params, error=guard.reason,
                       extra={"container_id": container.id})

    def _wait(self, container, case: str, ctx: CaseContext) -> tuple[int | None, bool]:
        """(exit code, timed out). A wait that ends with the engine unreachable is a HostFault, not a timeout."""
        import requests

        while True:
            left = ctx.timeout_s - (time.monotonic() - ctx.sampler.t0)
            try:
                return container.wait(timeout=max(left, 0.1))["StatusCode"], False
            except requests.exceptions.RequestException as err:  # timed out, or the connection failed
                if not self._engine_answers():
                    raise HostFault(f"the Docker engine went away while {case} ran ({one_line(err)})") from None
                if ctx.timeout_s - (time.monotonic() - ctx.sampler.t0) > 1.0:
                    continue  # a dropped connection before the deadline: wait again
                self._kill(container)
                container.wait(timeout=30)
                return None, True

    def _engine_answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001 - any failure means no engine
            return False

    def _kill(self, container) -> None:
        with contextlib.suppress(Exception):  # it may have exited meanwhile
            self.client.api.kill(container.id)

    def _remove(self, container, case: str, ctx: CaseContext) -> None:
        try:
            container.remove(force=True)
        except Exception as err:  # noqa: BLE001 - the case's outcome stands; the watchdog or the next run cleans up
            level = logging.DEBUG if engine_gone(err) else logging.WARNING  # the host fault says it already
            log.log(level, "%s: could not remove container %s (%s)", case, container.short_id, one_line(err))
            return
        if ctx.watchdog:
            ctx.watchdog.done(container.id)


def _cannot_run(err: Exception) -> bool:
    """Whether a container that failed to start did so because the image cannot run the command (the
    team's fault), e.g. it has no /bin/bash, rather than because of the host."""
    text = str(err).lower()
    return "exec" in text and ("not found" in text or "no such file" in text or "permission denied" in text)


def _tail_bytes(data: bytes, limit: int) -> str:
    """The last ``limit`` bytes of a log, as text (a partial first character is replaced)."""
    return data[-limit:].decode("utf-8", errors="replace")


class LocalRunner:
    """Runs a host command per case, e.g. ``python -m predictor -i {inputs} -o {outputs}``, in its own
    process group (killed whole on timeout, on a disk cap, or on Ctrl-C of the monitor). No sandbox: for
    development and hosts without Docker. ``cpus``: a CPU quota in cores, applied as the CPU affinity of the
    command (``taskset``: pinned to ceil(cpus) of the cores this process may use); None: no quota."""

    def __init__(self, command: str, cpus: float | None = None):
        self.command, self.cpus = command, cpus

    def cores(self) -> list[int] | None:
        """The cores the command is pinned to; None without a quota."""
        if not self.cpus:
            return None
        allowed = sorted(os.sched_getaffinity(0))
        return allowed[:max(1, math.ceil(self.cpus))]

    def run(self, case: str, in_dir: Path, out_dir: Path, ctx: CaseContext) -> Outcome:
        # Plain replacement, not str.format: other braces in the command (a dict literal) stay as they are.
        argv = [a.replace("{inputs}", str(in_dir)).replace("{outputs}", str(out_dir))
                for a in shlex.split(self.command)]
        cores = self.cores()
        if cores is not None:
            argv = ["taskset", "--cpu-list", ",".join(map(str, cores)), *argv]
        params = {"argv": argv, "timeout_s": ctx.timeout_s, "cpu_cores": cores}
        now = lambda: time.monotonic() - ctx.sampler.t0  # noqa: E731
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The child's output goes to an unnamed temporary file (never a results file), read back at exit.
        with tempfile.TemporaryFile() as log_file:
            try:
                proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError as err:
                return Outcome(None, False, False, "", Timeline(now(), now()), params, error=one_line(err))
            started = now()
            if ctx.watchdog:
                ctx.watchdog.group(proc.pid, ctx.deadline())
            try:
                timed_out, reason = self._wait(proc, out_dir, ctx)
            finally:
                _kill_group(proc)  # also on Ctrl-C: nothing of the case outlives the monitor's run
                if ctx.watchdog:
                    ctx.watchdog.done(proc.pid)
            exited = now()
            ctx.sampler.probe = None
            text = _read_tail(log_file, ctx.log_max_bytes)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        oom = proc.returncode == -signal.SIGKILL and not timed_out and reason is None
        return Outcome(proc.returncode, timed_out, oom, text, Timeline(started, exited), params, error=reason,
                       cpu_total_s=cpu)

    def _wait(self, proc: subprocess.Popen, out_dir: Path, ctx: CaseContext) -> tuple[bool, str | None]:
        """(timed out, disk-cap reason) once the command has ended or was killed."""
        with contextlib.suppress(psutil.Error):
            ctx.sampler.probe = ProcessTreeProbe(proc.pid)
        places = {OUTPUTS: (out_dir, ctx.limits.output_bytes)}
        with DiskGuard(places, ctx.limits.entries, breach=lambda _: _kill_group(proc)) as guard:
            try:
                proc.wait(timeout=max(ctx.timeout_s - (time.monotonic() - ctx.sampler.t0), 0.1))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return True, None
        return False, guard.reason


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _read_tail(handle, limit: int) -> str:
    """The last ``limit`` bytes of an open binary file, as text."""
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(size - limit, 0))
    return handle.read().decode("utf-8", errors="replace")
