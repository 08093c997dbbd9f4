"""Run a team over every case, one sandboxed run per case, and write its results folder.

Flow per case (in sorted case order): stage a throwaway input folder holding only ``<Case>_0000.nii.gz``
and a fresh output folder -> start the sampler -> run (container or local command) -> stop the sampler
-> collect the output safely -> figures -> ``cases/<Case>.json``, the PNG, and both efficiency CSVs
rebuilt from the records. ``run.json`` holds the host's fingerprint, the image, the settings and the run id.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from challenge.cases import list_images
from resource_monitor.collect import collect_output
from resource_monitor.efficiency import accurate_figures, flare22_figures
from resource_monitor.gpu import Gpu
from resource_monitor.host import fingerprint
from resource_monitor.plot import plot_case
from resource_monitor.records import finished_cases, write_efficiency_tables, write_json
from resource_monitor.runners import (
    LABEL_HOST,
    LABEL_PID,
    LABEL_RUN,
    CaseRunner,
    DockerRunner,
    LocalRunner,
    Outcome,
    monitor_alive,
    monitor_identity,
)
from resource_monitor.sampling import Sampler
from resource_monitor.settings import RunSettings

log = logging.getLogger(__name__)


class MonitorError(ValueError):
    """A run that cannot start (no cases, no image, a bad archive); the message is one line."""


def select_cases(inputs: Path, pattern: str) -> dict[str, Path]:
    """Case id -> image path for ``<Case>_0000.nii.gz`` files whose case id or file name matches ``pattern``."""
    cases = {c: p for c, p in list_images(inputs).items()
             if fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(p.name, pattern)}
    if not cases:
        raise MonitorError(f"{inputs}: no <Case>_0000.nii.gz images match {pattern!r}")
    return cases


def load_archive(client, archive: Path) -> tuple[str, str]:
    """``docker load`` a ``docker save`` archive (gzip or plain); returns (team, "team:latest").
    The team is the file name up to its first dot, in lower case, as FLARE22 derived it."""
    import docker

    team = archive.name.split(".")[0].lower()
    if not team:
        raise MonitorError(f"{archive}: cannot derive a team name from the file name")
    try:
        with archive.open("rb") as f:
            images = client.images.load(f)
    except (OSError, docker.errors.DockerException) as err:
        raise MonitorError(f"{archive}: not a loadable docker image archive ({str(err).splitlines()[0]})") from None
    tags = sorted(t for image in images for t in image.tags)
    if f"{team}:latest" not in tags:
        raise MonitorError(f"{archive}: holds {', '.join(tags) or 'no tagged image'}, not {team}:latest")
    return team, f"{team}:latest"


def remove_leftovers(client) -> list[str]:
    """Remove containers left by crashed monitor runs on this host; never those of a live run.

    A leftover carries the run label, this host's name, and the identity (PID and start time) of a monitor
    process that no longer runs. Containers labelled by another host (an engine shared across machines or
    PID namespaces) are left alone: their monitor's liveness cannot be checked from here.
    """
    import docker

    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN}):
        labels = container.labels
        if labels.get(LABEL_HOST) != os.uname().nodename or monitor_alive(labels.get(LABEL_PID, "")):
            continue
        try:
            container.remove(force=True)
        except docker.errors.NotFound:  # removed meanwhile by its own run
            continue
        removed.append(container.name)
    if removed:
        log.warning("removed %d leftover container(s) of crashed runs: %s", len(removed), ", ".join(removed))
    return removed


def case_status(outcome: Outcome, collected_path: Path | None, refused: str | None, memory: str) -> str:
    if outcome.error:
        return f"error: {outcome.error}"
    if outcome.timed_out:
        return "timeout"
    if outcome.oom:
        return f"error: out of memory (killed at the {memory} limit)"
    if outcome.exit_code != 0:
        return f"error: exit code {outcome.exit_code}"
    if refused:
        return f"error: refused output: {refused}"
    return "ok" if collected_path else "no-output"


def _stage(work: Path, image: Path, writable: bool) -> tuple[Path, Path]:
    in_dir, out_dir = work / "inputs", work / "outputs"
    in_dir.mkdir()
    out_dir.mkdir()
    shutil.copyfile(image, in_dir / image.name)
    os.chmod(in_dir / image.name, 0o644)
    os.chmod(in_dir, 0o777 if writable else 0o755)
    os.chmod(out_dir, 0o777)  # writable by whatever user the image runs as
    return in_dir, out_dir


def run_case(case: str, image: Path, runner: CaseRunner, settings: RunSettings, gpu: Gpu | None) -> dict:
    """Run one case and return its record (also written to ``cases/<Case>.json``)."""
    team_dir = settings.team_dir
    with tempfile.TemporaryDirectory(prefix=f"flare-{case}-", ignore_cleanup_errors=True) as tmp:
        in_dir, out_dir = _stage(Path(tmp), image, settings.writable_inputs)
        sampler = Sampler(settings.interval_s, gpu)
        started_utc = datetime.now(timezone.utc).isoformat()
        sampler.start()
        outcome = runner.run(case, in_dir, out_dir, sampler, settings.timeout_s)
        teardown_end = time.monotonic() - sampler.t0
        series = sampler.stop()
        # The Time ends at the target's exit; the official run also timed `--rm` (teardown_end).
        time_s = outcome.timeline.exited if outcome.error is None else teardown_end
        collected_path, refused, unexpected = None, None, []
        if outcome.error is None and not outcome.timed_out:
            got = collect_output(case, out_dir, team_dir / "outputs", settings.output_cap_bytes)
            collected_path, refused, unexpected = got.path, got.refused, got.unexpected
    status = case_status(outcome, collected_path, refused, settings.memory)
    (team_dir / "cases").mkdir(parents=True, exist_ok=True)
    (team_dir / "cases" / f"{case}.log").write_text(outcome.log)
    record = {
        "case": case, "status": status, "finished": True,
        "started_utc": started_utc, "time_s": time_s, "time_s_with_teardown": teardown_end,
        "created_s": outcome.timeline.created, "startup_s": outcome.timeline.started,
        "exited_s": outcome.timeline.exited,
        "exit_code": outcome.exit_code, "oom": outcome.oom, "timed_out": outcome.timed_out,
        "log_tail": outcome.log.splitlines()[-settings.log_tail_lines:], "log_file": f"{case}.log",
        "unexpected_outputs": unexpected, "params": outcome.params, **outcome.extra,
        "flare22": flare22_figures(series, time_s, outcome.timed_out),
        "accurate": accurate_figures(series, outcome.timeline, outcome.cpu_total_s),
        "series": series.to_json(),
    }
    write_json(team_dir / "cases" / f"{case}.json", record)
    if settings.plots:
        plot_case(series, f"{settings.team} / {case}: {status}", team_dir / "plots" / f"{case}.png")
    return record


def run_team(settings: RunSettings, docker_client=None) -> Path:
    """Run ``settings.image`` (or ``settings.command``) on every selected case; returns the team folder.

    Raises MonitorError before any case runs when there are no cases or the image is missing.
    """
    cases = select_cases(settings.inputs, settings.cases_glob)
    team_dir = settings.team_dir
    team_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex
    gpu = Gpu.open(settings.gpu)
    image_info, client = None, None
    if settings.command:
        runner: CaseRunner = LocalRunner(settings.command, team_dir / "cases")
    else:
        import docker

        client = docker_client or docker.from_env()
        remove_leftovers(client)
        try:
            image = client.images.get(settings.image)
        except docker.errors.ImageNotFound:
            raise MonitorError(f"--image {settings.image}: no such image (load or build it first)") from None
        image_info = {"tag": settings.image, "id": image.id, "digests": image.attrs.get("RepoDigests", []),
                      "created": image.attrs.get("Created")}
        runner = DockerRunner(client, settings.image, run_id, settings)
    manifest = {"run_id": run_id, "team": settings.team, "started_utc": datetime.now(timezone.utc).isoformat(),
                "monitor": monitor_identity(), "host": fingerprint(gpu, client),
                "image": image_info, "command": settings.command,
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()},
                "cases": list(cases)}
    write_json(team_dir / "run.json", manifest)
    done = finished_cases(team_dir / "cases") if settings.resume else set()
    counts: dict[str, int] = {}
    for n, (case, image_path) in enumerate(cases.items(), 1):
        if case in done:
            print(f"[{n}/{len(cases)}] {settings.team} {case}: already finished (--resume)", flush=True)
            continue
        record = run_case(case, image_path, runner, settings, gpu)
        write_efficiency_tables(team_dir)
        kind = record["status"].split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
        f = record["flare22"]
        print(f"[{n}/{len(cases)}] {settings.team} {case}: {record['status']}, Time {f['Time']:.2f} s, "
              f"AUC_CPU {f['AUC_CPU_Time']:.1f} %s, GPU_Mem {f['GPU_Mem']} MiB", flush=True)
    write_efficiency_tables(team_dir)
    manifest.update(finished_utc=datetime.now(timezone.utc).isoformat(), status_counts=counts)
    write_json(team_dir / "run.json", manifest)
    return team_dir
