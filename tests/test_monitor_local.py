"""The monitor's local mode (a host command per case): the same sampling and files as with Docker,
CPU accounting of a process tree, timeouts that kill the whole tree, and the CLI's argument errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import psutil
import pytest

from phantoms import PhantomConfig, write_dataset
from resource_monitor.monitor import run_team
from resource_monitor.settings import RunSettings
from tests.test_monitor_docker import busy_cores, flare22_prediction

WORKER = textwrap.dedent("""
    import pathlib, shutil, subprocess, sys, time
    mode, inputs, outputs = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    if mode == "child":  # the CPU is burned by a child process: the tree must be counted
        burn = "import time\\nt=time.process_time()\\nwhile time.process_time()-t<2: pass"
        subprocess.run([sys.executable, "-c", burn])
    if mode == "sleep":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        time.sleep(600)
    if mode == "fail":
        sys.exit(4)
    for f in inputs.glob("*_0000.nii.gz"):
        shutil.copy(f, outputs / f.name.replace("_0000", ""))
""")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    write_dataset(root, 1, seed=9, config=PhantomConfig(shape=(32, 32, 16)))
    (root / "worker.py").write_text(WORKER)
    return root


def _settings(cases, tmp_path, mode, **kw):
    command = f"{sys.executable} {cases / 'worker.py'} {mode} {{inputs}} {{outputs}}"
    return RunSettings(inputs=cases / "images", results=tmp_path, team="local", command=command, gpu=None,
                       plots=False, **kw)


def test_process_tree_cpu_in_both_modes(cases, tmp_path):
    busy = busy_cores()
    team_dir = run_team(_settings(cases, tmp_path, "child")).team.path
    eff = pd.read_csv(team_dir / "efficiency.csv")
    accurate = pd.read_csv(team_dir / "efficiency_accurate.csv").iloc[0]
    assert eff["status"].tolist() == ["ok"] and (team_dir / "outputs/Phantom_0001.nii.gz").exists()
    assert accurate["cpu_core_s"] == pytest.approx(2.0, rel=0.2)
    assert pd.isna(eff.iloc[0]["GPU_Mem"]) and pd.isna(accurate["gpu_device_peak_mib"])  # no GPU: empty
    record = json.loads((team_dir / "cases/Phantom_0001.json").read_text())
    assert record["params"]["argv"][-2:] != ["{inputs}", "{outputs}"]
    if busy > 0.15:
        pytest.skip(f"host busy ({busy:.2f} cores just before the run): the system-wide flare22 figure is "
                    "checked on a quiet host")
    expected = flare22_prediction(len(record["series"]["t"]), 0.1, 2.0, psutil.cpu_count())
    assert eff.iloc[0]["AUC_CPU_Time"] == pytest.approx(expected, rel=0.2)


def test_timeout_kills_the_whole_process_group(cases, tmp_path):
    team_dir = run_team(_settings(cases, tmp_path, "sleep", timeout_s=2)).team.path
    eff = pd.read_csv(team_dir / "efficiency.csv")
    assert eff["status"].tolist() == ["timeout"] and eff.iloc[0]["Time"] == 3600
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "time.sleep(600)" in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


def test_exit_code_is_reported(cases, tmp_path):
    team_dir = run_team(_settings(cases, tmp_path, "fail")).team.path
    assert pd.read_csv(team_dir / "efficiency.csv")["status"].tolist() == ["error: exit code 4"]


@pytest.mark.parametrize("args,message", [
    (["--images", "/nonexistent"], "--images /nonexistent: no such folder"),
    (["--timeout", "0"], "must be > 0"),
    (["--gpu", "first"], "expected a GPU index, 'auto' or 'none'"),
    (["--memory", "lots"], "not a size"),
    (["--cases", "nomatch*"], "no <Case>_0000.nii.gz images match"),
    (["--archive", "/nonexistent.tar.gz"], "no such file"),
])
def test_bad_arguments_exit_2_with_one_line(cases, tmp_path, args, message):
    base = {"--images": str(cases / "images"), "--results": str(tmp_path)}
    argv = [sys.executable, "-m", "resource_monitor", "run"]
    if "--archive" not in args:
        argv += ["--command", "true {inputs} {outputs}"]
    for flag, value in base.items():
        if flag not in args:
            argv += [flag, value]
    done = subprocess.run(argv + args, capture_output=True, text=True)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.gpu
def test_gpu_memory_of_a_local_process(gpu_index, cases, tmp_path):
    """On a host with an NVIDIA GPU and torch: a process holding ~1 GiB shows in both GPU figures."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    code = ("import torch,time; x=torch.empty(1<<30, dtype=torch.uint8, device='cuda'); x.fill_(1); "
            "torch.cuda.synchronize(); time.sleep(3)")
    settings = RunSettings(inputs=cases / "images", results=tmp_path, team="gpu", gpu=gpu_index, plots=False,
                           command=f"{sys.executable} -c \"{code}\"")
    accurate = pd.read_csv(run_team(settings).team.efficiency_accurate_csv).iloc[0]
    assert accurate["gpu_process_peak_mib"] >= 1024
    assert accurate["gpu_device_peak_mib"] >= accurate["gpu_process_peak_mib"]


def _cli(cases, results, mode, *extra):
    command = f"{sys.executable} {cases / 'worker.py'} {mode} {{inputs}} {{outputs}}"
    return subprocess.run([sys.executable, "-m", "resource_monitor", "run", "--command", command, "--team", "local",
                           "--images", str(cases / "images"), "--results", str(results), "--gpu", "none",
                           "--no-plots", *extra], capture_output=True, text=True, timeout=300)


def test_exit_code_gates_ci_and_resume_keeps_the_run_id(cases, tmp_path):
    done = _cli(cases, tmp_path, "fail")
    assert done.returncode == 1 and "not ok: Phantom_0001: error: exit code 4" in done.stderr
    done = _cli(cases, tmp_path / "good", "copy")
    assert done.returncode == 0, done.stderr
    first = json.loads((tmp_path / "good/local/run.json").read_text())
    record = json.loads((tmp_path / "good/local/cases/Phantom_0001.json").read_text())
    assert record["run_id"] == first["run_id"] and len(first["attempts"]) == 1
    assert first["attempts"][0]["status"] == "complete" and first["attempts"][0]["counts"] == {"ok": 1}
    done = _cli(cases, tmp_path / "good", "copy", "--resume")
    assert done.returncode == 0 and "already finished (--resume)" in done.stdout
    again = json.loads((tmp_path / "good/local/run.json").read_text())
    assert again["run_id"] == first["run_id"] and len(again["attempts"]) == 2
    assert again["attempts"][0] == first["attempts"][0] and again["attempts"][1]["counts"] == {}


def _copy_run(cases, results, *flags: str) -> subprocess.CompletedProcess:
    """``python -m resource_monitor run`` of the copying worker in local mode, with ``flags`` added."""
    command = f"{sys.executable} {cases / 'worker.py'} copy {{inputs}} {{outputs}}"
    return subprocess.run([sys.executable, "-m", "resource_monitor", "run", "--command", command, "--results",
                           str(results), "--gpu", "none", *flags], capture_output=True, text=True, timeout=300)


def test_old_flag_spelling_warns_and_works(cases, tmp_path):
    done = _copy_run(cases, tmp_path, "--inputs", str(cases / "images"), "--no-plots")
    assert done.returncode == 0, done.stderr
    assert "warning: --inputs is deprecated; use --images" in done.stderr


def test_verbose_shows_the_harness_not_matplotlib_and_absent_figures_print_as_dashes(cases, tmp_path):
    done = _copy_run(cases, tmp_path, "--images", str(cases / "images"), "-v")
    assert done.returncode == 0, done.stderr
    assert "findfont" not in done.stderr and "matplotlib" not in done.stderr
    assert "GPU_Mem -" in done.stdout and "None" not in done.stdout
