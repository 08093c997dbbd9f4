"""Efficiency formulas on synthetic sample series with hand-computed values, cgroup readers on recorded
files (v1 as on this machine, v2 as on most current hosts), and safe output collection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resource_monitor.cgroups import cgroup_of
from resource_monitor.collect import collect_output
from resource_monitor.efficiency import Timeline, accurate_figures, flare22_figures, official_cpu_percent, stable_max
from resource_monitor.sampling import Series

DATA = Path(__file__).parent / "data"


def _series(gpu, cpu_times, ram, interval=0.1, t=None, target_cpu=None, target_mem=None, gpu_proc=None):
    n = len(ram)
    s = Series(interval, cpu_times[0])
    s.t = t or [interval * (i + 1) for i in range(n)]
    s.gpu_device_mib = gpu
    s.gpu_process_mib = gpu_proc or [None] * n
    s.cpu_times = cpu_times[1:]
    s.ram_used_mib = ram
    s.target_cpu_s = target_cpu or [None] * n
    s.target_memory_mib = target_mem or [None] * n
    return s


def test_official_cpu_formula_with_its_bias():
    # deltas (user, system, idle): (0.1, 0.0, 0.1) -> 100 - 100*0.1/0.3 = 66.67; (0, 0, 0.2) -> 100 - 100*0.2/0.3
    s = _series([None, None], [(0, 0, 0), (0.1, 0, 0.1), (0.1, 0, 0.3)], [1.0, 1.0])
    assert official_cpu_percent(s) == pytest.approx([100 - 100 * 0.1 / 0.3, 100 - 100 * 0.2 / 0.3])


def test_stable_max_ignores_spikes_below_two_percent():
    values = [1000.0] * 60 + [3000.0] * 39 + [9000.0]  # 9000 is 1 % of samples, 3000 is 39 %
    assert stable_max(values) == 3000.0
    assert stable_max([5.0, 6.0]) == 6.0  # both occur in 50 % of samples
    assert stable_max([]) is None


def test_flare22_figures_by_hand():
    gpu = [1000.0, 3048.0, 3048.0, 2048.0]
    times = [(0, 0, 0), (0.1, 0, 0.1), (0.2, 0, 0.2), (0.3, 0, 0.3), (0.4, 0, 0.4)]
    s = _series(gpu, times, [100.0, 200.0, 300.0, 401.5])
    row = flare22_figures(s, time_s=0.437, timed_out=False)
    assert row["Time"] == 0.44
    assert row["GPU_Mem"] == 3048
    assert row["AUC_GPU_Time"] == round(0.1 * sum(gpu))  # 914.4 -> 914
    assert row["AUC_GPU_Time_tol2G"] == pytest.approx(0.1 * (0 + 1000 + 1000 + 0))  # 200
    cpu = 100 - 100 * 0.1 / 0.3
    assert row["CPU_Utilization"] == round(cpu, 2)
    assert row["AUC_CPU_Time"] == round(4 * cpu * 0.1, 2)
    # load_json.py: RAM to 2 decimals, AUC_RAM_Time to 0 (np.round): 0.1 * 1001.5 = 100.15 -> 100
    assert (row["RAM"], row["AUC_RAM_Time"]) == (401.5, 100.0)


def test_timeout_takes_the_official_penalties_and_no_gpu_stays_empty():
    s = _series([None, None], [(0, 0, 0), (0, 0, 0.2), (0, 0, 0.4)], [1.0, 1.0])
    row = flare22_figures(s, time_s=12.3, timed_out=True)
    assert (row["Time"], row["AUC_GPU_Time_tol2G"], row["AUC_CPU_Time"]) == (3600, 29_491_200, 360_000)
    assert row["GPU_Mem"] is None and row["AUC_GPU_Time"] is None


def test_accurate_figures_trapezoid_on_real_times():
    t = [0.0, 0.1, 0.3, 0.4]  # uneven spacing: the trapezoid must use the real times
    s = _series([100.0, 200.0, 200.0, 100.0], [(0, 0, 0)] * 5, [1.0] * 4, t=t,
                target_cpu=[None, 0.1, 0.3, 0.35], target_mem=[10.0, 20.0, None, 20.0],
                gpu_proc=[0.0, 50.0, 50.0, 0.0])
    row = accurate_figures(s, Timeline(started=0.05, exited=0.45, created=0.02), cpu_total_s=None)
    assert row["create_s"] == 0.02 and row["first_seen_s"] == 0.1  # the first sample that saw the target
    assert row["startup_s"] == 0.05 and row["run_s"] == pytest.approx(0.4) and row["wall_s"] == 0.45
    assert row["cpu_core_s"] == 0.35 and row["cpu_mean_cores"] == pytest.approx(0.875)
    assert row["cpu_peak_cores"] == pytest.approx(1.0)  # 0.2 core-s over 0.2 s
    assert row["gpu_device_auc_mib_s"] == pytest.approx(0.1 * 150 + 0.2 * 200 + 0.1 * 150)
    assert row["gpu_process_peak_mib"] == 50.0
    assert row["memory_auc_mib_s"] == pytest.approx(0.1 * 15 + 0.3 * 20)  # the missing sample is skipped
    assert row["samples"] == 4 and row["mean_period_s"] == pytest.approx(0.13333, abs=1e-4)
    assert accurate_figures(s, Timeline(0.05, 0.45), cpu_total_s=2.0)["cpu_core_s"] == 2.0


def test_series_json_round_trip():
    s = _series([None], [(0, 0, 0), (1, 2, 3)], [5.0])
    back = Series.from_json(s.to_json())
    assert back.cpu_times == [(1, 2, 3)] and back.cpu_before == (0, 0, 0) and back.ram_used_mib == [5.0]


def test_cgroup_v2_recorded():
    cg = cgroup_of(4242, root=DATA / "cgroup_v2")
    assert cg.version == 2
    assert cg.cpu_seconds() == pytest.approx(2.003512)
    assert cg.memory_mib() == 50.0
    assert cg.pids() == {4242, 4250}


def test_cgroup_v1_recorded():
    cg = cgroup_of(77, root=DATA / "cgroup_v1")
    assert cg.version == 1
    assert cg.cpu_seconds() == 1.5 and cg.memory_mib() == 10.0 and cg.pids() == {77}


def test_cgroup_of_this_process_reads():
    cg = cgroup_of(os.getpid())
    assert cg.cpu_seconds() > 0 and cg.memory_mib() > 0


def test_collect_refuses_symlinks_other_files_and_big_outputs(tmp_path):
    out, dest = tmp_path / "out", tmp_path / "dest"
    out.mkdir()
    (out / "A.nii.gz").symlink_to("/etc/passwd")
    got = collect_output("A", out, dest, cap_bytes=1 << 20)
    assert got.path is None and "symlink" in got.refused
    (out / "A.nii.gz").unlink()
    (out / "A.nii.gz").mkdir()
    assert "not a regular file" in collect_output("A", out, dest, 1 << 20).refused
    (out / "A.nii.gz").rmdir()
    (out / "A.nii.gz").write_bytes(b"x" * 2000)
    (out / "../escape.nii.gz").write_bytes(b"y")
    (out / "other.txt").write_text("z")
    assert "over the cap" in collect_output("A", out, dest, cap_bytes=1000).refused
    got = collect_output("A", out, dest, cap_bytes=1 << 20)
    assert got.path == dest / "A.nii.gz" and got.path.read_bytes() == b"x" * 2000
    assert got.unexpected == ["other.txt"]
    assert collect_output("B", out, dest, 1 << 20).path is None  # nothing for case B
