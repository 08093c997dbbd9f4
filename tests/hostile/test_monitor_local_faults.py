"""Host faults, interrupts, hostile names and disk floods against the monitor's local mode (a host command
per case): real signals, a real full disk (a size-limited tmpfs), real processes; no Docker needed.
The same rules hold for containers: tests/hostile/test_monitor_docker_faults.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from phantoms import PhantomConfig, write_dataset
from resource_monitor.runners import monitor_identity
from tests.hostile.conftest import wait_for

WORKER = textwrap.dedent("""
    import os, pathlib, shutil, subprocess, sys, time
    mode, inputs, outputs = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    if mode == "hang":  # a child that ignores everything but SIGKILL, in the command's process group
        subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                          " time.sleep(600)  # hostile-child"])
        print("started", flush=True)
        time.sleep(600)
    if mode == "flood":  # write until stopped
        with open(outputs / "junk.bin", "wb") as f:
            while True:
                f.write(os.urandom(1 << 20))
                f.flush()
    if mode == "files":  # many empty files
        for n in range(50_000):
            (outputs / f"f{n}").touch()
        time.sleep(30)
    if mode == "big":  # a valid run with a 3 MiB output
        for f in inputs.glob("*_0000.nii.gz"):
            (outputs / f.name.replace("_0000", "")).write_bytes(os.urandom(3 << 20))
        sys.exit(0)
    if mode == "chatty":  # long log lines and many stray outputs
        sys.stdout.write(("x" * 10_000 + "\\n") * 200)
        for n in range(150):
            (outputs / f"stray{n}").touch()
    for f in inputs.glob("*_0000.nii.gz"):
        shutil.copy(f, outputs / f.name.replace("_0000", ""))
""")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-local")
    write_dataset(root, 2, seed=9, config=PhantomConfig(shape=(32, 32, 16)))
    (root / "worker.py").write_text(WORKER)
    return root


def _argv(cases: Path, results: Path, mode: str, *extra: str) -> list[str]:
    command = f"{sys.executable} {cases / 'worker.py'} {mode} {{inputs}} {{outputs}}"
    return [sys.executable, "-m", "resource_monitor", "run", "--command", command, "--team", "local",
            "--images", str(cases / "images"), "--results", str(results), "--gpu", "none", "--no-plots", *extra]


def _monitor(cases: Path, results: Path, mode: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(cases, results, mode, *extra), capture_output=True, text=True, timeout=timeout)


def _alive(procs: list[psutil.Process]) -> bool:
    return any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)


def _start_and_wait_for_case(cases: Path, results: Path, mode: str, *extra: str
                             ) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """Start the monitor; return it once its case's hanging child runs, with that case's processes."""
    proc = subprocess.Popen(_argv(cases, results, mode, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    monitor = psutil.Process(proc.pid)

    def hanging() -> list[psutil.Process]:
        found = []
        for child in monitor.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "hostile-child" in " ".join(child.cmdline()):
                    found.append(child)
        return found

    assert wait_for(lambda: bool(hanging()), 60), "the case never started"
    workers = [c for c in monitor.children(recursive=True) if "worker.py" in " ".join(c.cmdline())]
    return proc, hanging() + workers


def _run_json(results: Path) -> dict:
    return json.loads((results / "local" / "run.json").read_text())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_cleans_up_exits_130_and_resume_finishes(cases, tmp_path, sig):
    proc, case_procs = _start_and_wait_for_case(cases, tmp_path, "hang", "--cases", "Phantom_0001")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["flare-monitor: interrupted; rerun with --resume to finish"]
    assert wait_for(lambda: not _alive(case_procs), 10), "the case's process group outlived the monitor"
    assert not (tmp_path / "local/cases/Phantom_0001.json").exists()  # unfinished: --resume runs it again
    attempts = _run_json(tmp_path)["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted"]
    done = _monitor(cases, tmp_path, "copy", "--resume")
    assert done.returncode == 0, done.stderr
    run = _run_json(tmp_path)
    assert [a["status"] for a in run["attempts"]] == ["interrupted", "complete"]
    assert {a["run_id"] for a in run["attempts"]} == {run["run_id"]}


def test_a_killed_monitor_s_case_still_stops_at_its_deadline(cases, tmp_path):
    """SIGKILL leaves no chance to clean up: the watchdog process stops the case at its deadline (timeout
    plus a few seconds of grace), then removes its temporary folder; the next run finds nothing left."""
    proc, case_procs = _start_and_wait_for_case(cases, tmp_path, "hang", "--cases", "Phantom_0001", "--timeout", "4")
    folders = list(Path(tempfile.gettempdir()).glob("flare-case-Phantom_0001-*"))
    killed_at = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _alive(case_procs), "the case should still run right after the monitor's death"
    assert wait_for(lambda: not _alive(case_procs), 30), "the watchdog did not stop the case"
    assert time.monotonic() - killed_at < 4 + 5 + 10
    assert folders and wait_for(lambda: not any(f.exists() for f in folders), 10)


def test_a_full_results_disk_is_a_host_fault_and_resume_recovers(cases, tmp_path):
    """A real ENOSPC: the results folder is a 2 MiB tmpfs and the case's output is 3 MiB."""
    results = tmp_path / "results"
    results.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(results)], capture_output=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        done = _monitor(cases, results, "big", "--cases", "Phantom_0001")
        assert done.returncode == 3, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "host fault" in lines[0] and "No space left on device" in lines[0]
        assert str(results) in lines[0] and "Traceback" not in done.stderr
        assert not (results / "local/cases/Phantom_0001.json").exists()  # not the team's result
        assert not list((results / "local").rglob(".*.part*"))  # nothing half-written
        subprocess.run(["mount", "-o", "remount,size=64m", str(results)], check=True)
        done = _monitor(cases, results, "big", "--cases", "Phantom_0001", "--resume")
        assert done.returncode == 0, done.stderr
        record = json.loads((results / "local/cases/Phantom_0001.json").read_text())
        assert record["status"] == "ok"
        assert [a["status"] for a in _run_json(results)["attempts"]] == ["host-fault", "complete"]
    finally:
        subprocess.run(["umount", "-l", str(results)], check=False)


def test_an_output_flood_is_stopped_while_it_runs(cases, tmp_path):
    start = time.monotonic()
    done = _monitor(cases, tmp_path, "flood", "--cases", "Phantom_0001", "--max-output-mib", "20", "--timeout", "120")
    assert time.monotonic() - start < 60  # stopped at the cap, not at the timeout
    assert done.returncode == 1
    record = json.loads((tmp_path / "local/cases/Phantom_0001.json").read_text())
    assert record["status"] == "error: wrote more than 20 MiB to /workspace/outputs"


def test_a_file_flood_is_stopped_and_the_record_stays_small(cases, tmp_path):
    done = _monitor(cases, tmp_path, "files", "--cases", "Phantom_0001", "--timeout", "120")
    assert done.returncode == 1
    path = tmp_path / "local/cases/Phantom_0001.json"
    assert json.loads(path.read_text())["status"] == "error: wrote more than 10000 files to /workspace/outputs"
    assert path.stat().st_size < 1 << 20


def test_case_records_are_bounded_in_bytes(cases, tmp_path):
    done = _monitor(cases, tmp_path, "chatty", "--cases", "Phantom_0001")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "local/cases/Phantom_0001.json").read_text())
    assert sum(len(line.encode()) for line in record["log_tail"]) <= 8 << 10
    assert len(record["unexpected_outputs"]) == 50 and record["unexpected_outputs_count"] == 150
    assert (tmp_path / "local/cases/Phantom_0001.log").stat().st_size >= 2_000_000  # the whole log is kept


@pytest.mark.parametrize("argv, message", [
    (["--team", "team one"], "team name 'team one' must be"),
    (["--team", "../../x"], "team name '../../x' must be"),
    (["--team", "$\\foo$"], "must be lower-case"),
])
def test_hostile_team_names_are_refused_before_anything_runs(cases, tmp_path, argv, message):
    command = f"{sys.executable} {cases / 'worker.py'} copy {{inputs}} {{outputs}}"
    done = subprocess.run([sys.executable, "-m", "resource_monitor", "run", "--command", command, "--images",
                           str(cases / "images"), "--results", str(tmp_path / "r"), *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").iterdir()) == []
    assert not (tmp_path / "x").exists()


def test_a_local_team_named_like_a_path_is_refused_by_the_organizer(cases, tmp_path):
    done = subprocess.run([sys.executable, "-m", "organizer", "challenge", "--local", "../../x=true",
                           "--images", str(cases / "images"), "--labels", str(cases / "labels"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "team name '../../x'" in done.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path.parent / "x").exists()


def test_mathtext_in_a_case_name_still_plots(cases, tmp_path):
    write_dataset(tmp_path, 1, seed=3, config=PhantomConfig(shape=(32, 32, 16)))
    images = tmp_path / "images"
    (images / "Phantom_0001_0000.nii.gz").rename(images / "$\\foo$_0000.nii.gz")
    command = f"{sys.executable} {cases / 'worker.py'} copy {{inputs}} {{outputs}}"
    done = subprocess.run([sys.executable, "-m", "resource_monitor", "run", "--command", command, "--team", "t",
                           "--images", str(images), "--results", str(tmp_path / "r"), "--gpu", "none"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r/t/plots/$\\foo$.png").stat().st_size > 1000


def test_the_next_run_removes_temporary_folders_of_dead_runs_only(cases, tmp_path):
    root = Path(tempfile.gettempdir())
    dead, live = root / f"flare-case-X-dead{os.getpid()}", root / f"flare-case-X-live{os.getpid()}"
    for folder, owner in ((dead, "999999:1.00"), (live, monitor_identity())):
        folder.mkdir(exist_ok=True)
        (folder / ".monitor").write_text(owner)
    try:
        done = _monitor(cases, tmp_path, "copy", "--cases", "Phantom_0001")
        assert done.returncode == 0, done.stderr
        assert not dead.exists() and live.exists()  # this test process is alive: its folder stays
    finally:
        shutil.rmtree(dead, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)
