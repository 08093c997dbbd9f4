"""A PNG per case: GPU memory (MiB), CPU utilisation (official %, and the target's cores) and RAM over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from challenge.files import atomic_path  # noqa: E402
from resource_monitor.efficiency import official_cpu_percent  # noqa: E402
from resource_monitor.sampling import Series  # noqa: E402


# Team and case names reach matplotlib as plain text: "$...$" is never parsed as mathtext (a case named
# "$\\foo$" would make matplotlib raise, and the plot would be lost).
def plot_case(series: Series, title: str, path: Path) -> Path:
    """A PNG of one case's curves at ``path`` (written atomically)."""
    with plt.rc_context({"text.parse_math": False}):
        return _plot_case(series, title, path)


def _plot_case(series: Series, title: str, path: Path) -> Path:
    t = np.asarray(series.t)
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    gpu = [np.nan if v is None else v for v in series.gpu_device_mib]
    proc = [np.nan if v is None else v for v in series.gpu_process_mib]
    axes[0].plot(t, gpu, label="device (flare22)")
    axes[0].plot(t, proc, label="target's processes (accurate)")
    axes[0].set_ylabel("GPU memory (MiB)")
    if np.isnan(gpu).all():
        axes[0].text(0.5, 0.5, "no GPU", transform=axes[0].transAxes, ha="center")
    axes[1].plot(t, official_cpu_percent(series) if len(series) else [], label="system used % (flare22)")
    axes[1].set_ylabel("CPU (%)")
    axes[2].plot(t, series.ram_used_mib, label="system used (flare22)")
    axes[2].plot(t, [np.nan if v is None else v for v in series.target_memory_mib], label="target (accurate)")
    axes[2].set_ylabel("RAM (MiB)")
    axes[2].set_xlabel("time since the sampler started (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)
    axes[0].set_title(title)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=70, format="png")
    finally:
        plt.close(fig)
    return path
