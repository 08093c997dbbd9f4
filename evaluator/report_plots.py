"""The report's figures, as inline PNGs: per-organ box plots, the ranked efficiency figures per case, the
per-case score heatmap, the significance map, the rank-stability bubbles and each team's resource curves.

Every function returns a matplotlib Figure (or None when there is nothing to draw); :func:`img` turns one
into an ``<img>`` with a data: URI and closes it. Callers draw inside ``plt.rc_context({"text.parse_math":
False})`` so that team and case names reach matplotlib as plain text.
"""

from __future__ import annotations

import base64
import html
import io
import math

import matplotlib
import numpy as np
import pandas as pd

from challenge.labels import Organ
from evaluator.ranking import Ranking
from evaluator.report_facts import Curves

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import StrMethodFormatter  # noqa: E402

DPI = 80
GPU_LABEL = "GPU AUC above 2 GiB (MiB·s)"
EFFICIENCY_PANELS = {"Time": "Time (s)", "AUC_GPU_Time_tol2G": "GPU AUC above\n2 GiB (MiB·s)",
                     "AUC_CPU_Time": "CPU AUC (%·s)", "AUC_RAM_Time": "RAM AUC (MiB·s)"}
GPU_METRIC = "AUC_GPU_Time_tol2G"


def img(fig: plt.Figure | None, alt: str) -> str:
    """``fig`` as an inline PNG ``<img>`` (the figure is closed); a "No data." paragraph for None."""
    if fig is None:
        return "<p>No data.</p>"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def team_colours(teams: list[str]) -> dict[str, tuple]:
    """One colour per team, in leaderboard order, the same in every figure."""
    cmap = plt.get_cmap("tab10" if len(teams) <= 10 else "tab20")
    return {team: cmap(n % cmap.N) for n, team in enumerate(teams)}


def ok_values(ranking: Ranking) -> pd.DataFrame:
    """The ranked values of the cases that were not penalised."""
    return ranking.values[ranking.values["penalised"] == ""]


def teams_with_ok_cases(ranking: Ranking) -> list[str]:
    """Teams (leaderboard order) with at least one case that was not penalised."""
    present = set(ok_values(ranking).index.get_level_values("team"))
    return [t for t in ranking.leaderboard.index if t in present]


def gpu_used(ranking: Ranking) -> bool:
    """Whether the GPU AUC is ranked and any case that ran ok has one above the tolerance (else every team ties
    at 0)."""
    ok = ok_values(ranking)
    return GPU_METRIC in ok.columns and bool((ok[GPU_METRIC] > 0).any())


def organ_boxplots(metrics: dict[str, pd.DataFrame], teams: list[str], colours: dict[str, tuple],
                   labels: tuple[Organ, ...]) -> plt.Figure | None:
    """DSC and NSD per label (short names on the axis), one box per team; None when no team was scored."""
    teams = [t for t in teams if t in metrics and not metrics[t].empty]
    if not teams:
        return None
    fig, axes = plt.subplots(2, 1, figsize=(14, 7.5), sharex=True)
    width = 0.8 / len(teams)
    for ax, kind in zip(axes, ("DSC", "NSD"), strict=True):
        for n, team in enumerate(teams):
            table = metrics[team]
            data = [pd.to_numeric(table.get(f"{o.short}_{kind}", pd.Series(dtype=float)), errors="coerce")
                    .dropna().to_numpy() for o in labels]
            pos = np.arange(len(labels)) + (n - (len(teams) - 1) / 2) * width
            box = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True,
                             flierprops={"markersize": 3})
            for patch in box["boxes"]:
                patch.set_facecolor(colours[team])
        ax.set_ylabel(kind)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colours[t], label=t) for t in teams]
    axes[0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.02), ncol=min(len(teams), 6),
                   frameon=False)
    axes[1].set_xticks(range(len(labels)), [o.short for o in labels], rotation=30, ha="right")
    return fig


def efficiency_plot(ranking: Ranking, colours: dict[str, tuple], with_gpu: bool) -> plt.Figure | None:
    """The ranked efficiency figures of every case that ran ok, per case (x) and team (colour): Time, GPU AUC
    above 2 GiB (only ``with_gpu``) and CPU AUC, each axis from 0. Teams without an ok case are not drawn;
    None when no team has one."""
    ok = ok_values(ranking)
    teams = teams_with_ok_cases(ranking)
    if not teams:
        return None
    cases = [str(c) for c in ranking.case_scores.columns]
    position = {c: i for i, c in enumerate(cases)}
    panels = [m for m in EFFICIENCY_PANELS if m in ok.columns and (with_gpu or m != GPU_METRIC)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(min(16, max(11, 0.3 * len(cases) + 5)), 2.6 * len(panels)),
                             sharex=True, squeeze=False)
    spread = min(0.6, 0.12 * len(teams))
    for ax, metric in zip(axes[:, 0], panels, strict=True):
        for n, team in enumerate(teams):
            rows = ok.loc[team]
            offset = (n - (len(teams) - 1) / 2) * spread / max(len(teams) - 1, 1)
            xs = [position[str(c)] + offset for c in rows.index]
            ax.scatter(xs, rows[metric].to_numpy(dtype=float), color=colours[team], s=28, label=team,
                       edgecolor="black", linewidth=0.4, zorder=3)
        top = float(ok[metric].max()) if len(ok) else 0.0
        ax.set_ylim(0, top * 1.12 if top > 0 else 1)
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}" if top >= 10 else "{x:,.2f}"))
        ax.set_ylabel(EFFICIENCY_PANELS[metric])
        ax.grid(alpha=0.3)
    bottom = axes[-1, 0]
    bottom.set_xlim(-0.6, len(cases) - 0.4)
    bottom.set_xticks(range(len(cases)), cases, rotation=90 if len(cases) > 8 else 30,
                      ha="center" if len(cases) > 8 else "right", fontsize=8 if len(cases) > 20 else 9)
    bottom.set_xlabel("case")
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="team", frameon=False)
    return fig


def score_heatmap(ranking: Ranking) -> plt.Figure:
    """Teams (leaderboard order) x cases: the per-case composite score, 1 (best on every metric) to the number
    of teams (worst), annotated when the grid is small enough to read."""
    scores = ranking.case_scores.reindex(ranking.leaderboard.index)
    n_teams, n_cases = scores.shape
    fig, ax = plt.subplots(figsize=(min(16, max(7, 0.5 * n_cases + 4)), 0.45 * n_teams + 2))
    worst = max(float(n_teams), 1.5)
    image = ax.imshow(scores.to_numpy(dtype=float), cmap="RdYlGn_r", vmin=1, vmax=worst, aspect="auto")
    if n_cases <= 30 and n_teams <= 20:
        for (row, col), value in np.ndenumerate(scores.to_numpy(dtype=float)):
            shade = (value - 1) / (worst - 1)
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if shade < 0.15 or shade > 0.85 else "black")
    ranks = ranking.leaderboard["rank"]
    ax.set_yticks(range(n_teams), [f"{int(ranks[t])}. {t}" for t in scores.index])
    ax.set_xticks(range(n_cases), [str(c) for c in scores.columns], rotation=90, fontsize=8 if n_cases > 20 else 9)
    ax.set_xlabel("case")
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("case score (lower is better)")
    return fig


def significance_map(ranking: Ranking) -> plt.Figure | None:
    """The Holm-adjusted p-values as a matrix: row team better than column team? Colours by significance
    level; None with fewer than two teams."""
    pairwise = ranking.pairwise
    if pairwise.empty:
        return None
    teams = ranking.leaderboard.index.tolist()
    lookup = pairwise.set_index(["team", "versus"])["p_holm"]
    matrix = np.array([[np.nan if a == b else float(lookup[(a, b)]) for b in teams] for a in teams])
    alpha = ranking.settings.alpha
    bounds = sorted({0.0, min(0.01, alpha), alpha, 1.0 + 1e-9})
    colours = ["#1a9850", "#91cf60", "#f0f0f0"][-(len(bounds) - 1):]
    cmap = ListedColormap(colours).with_extremes(bad="#bdbdbd")
    n = len(teams)
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * n + 3), max(3.5, 0.6 * n + 2)))
    ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=BoundaryNorm(bounds, cmap.N), aspect="auto")
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, "–" if math.isnan(value) else f"{value:.2g}", ha="center", va="center", fontsize=8)
    ax.set_yticks(range(n), teams)
    ax.set_xticks(range(n), teams, rotation=30, ha="right")
    ax.set_ylabel("is this team better ...")
    ax.set_xlabel("... than this team?")
    labels = [f"p < {b}" for b in bounds[1:-1]] + [f"p ≥ {alpha} (not significant)"]
    ax.legend(handles=[Patch(facecolor=c, edgecolor="#999999", label=lab) for c, lab in zip(colours, labels,
                                                                                           strict=True)],
              loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, title="Holm-adjusted")
    return fig


def stability_plot(ranking: Ranking, colours: dict[str, tuple]) -> plt.Figure:
    """Each team's bootstrap rank distribution as bubbles (area: frequency) and its full rank as a cross;
    the bubbles are sized to the grid so that none is clipped or overlaps the next row."""
    teams = ranking.leaderboard.index.tolist()
    boot = ranking.bootstrap_ranks
    n = len(teams)
    width, height = max(6.0, 0.55 * n + 3), 0.6 * n + 1.6
    fig, ax = plt.subplots(figsize=(width, height))
    # Axes span about (width - 2) x (height - 1.1) inches over (n + 0.4) units each way.
    step_pt = 72 * min((width - 2.0) / (n + 0.4), (height - 1.1) / (n + 0.4))
    biggest = (0.9 * step_pt) ** 2  # marker area (points^2) of a 100 % bubble
    full_rank = ranking.leaderboard["rank"]
    for y, team in enumerate(teams):
        freq = boot[team].value_counts(normalize=True)
        ax.scatter(freq.index.to_numpy(dtype=float), [y] * len(freq), s=biggest * freq.to_numpy(),
                   color=colours[team], alpha=0.7, clip_on=False)
        ax.scatter([float(full_rank[team])], [y], marker="x", color="black", zorder=3, clip_on=False)
    ax.set_yticks(range(n), teams)
    ax.set_xticks(range(1, n + 1))
    ax.set_xlim(0.3, n + 0.7)
    ax.set_ylim(n - 0.3, -0.7)
    ax.grid(alpha=0.2)
    ax.set_xlabel("rank (bubble area: bootstrap frequency; x: rank on all cases)")
    return fig


def curves_plot(team: str, curves: Curves) -> plt.Figure | None:
    """One team's per-case curves side by side: GPU memory (from 0), official system CPU % (0-100) and RAM
    used (from 0) over time, one colour per case, with a legend of the cases; None without curves."""
    cases = sorted(c for c, s in curves.items() if s.get("t"))
    if not cases:
        return None
    cmap = plt.get_cmap("tab10" if len(cases) <= 10 else "tab20")
    colour = {c: cmap(n % cmap.N) for n, c in enumerate(cases)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    keys = (("gpu", "GPU memory (MiB)"), ("cpu", "CPU, system-wide (%)"), ("ram", "RAM used (MiB)"))
    for case in cases:
        series = curves[case]
        t = list(series.get("t") or [])
        for ax, (key, _) in zip(axes, keys, strict=True):
            y = list(series.get(key) or [])[: len(t)]
            if y and not all(v is None for v in y):
                ax.plot(t[: len(y)], [np.nan if v is None else v for v in y], lw=1, color=colour[case])
    for ax, (key, label) in zip(axes, keys, strict=True):
        ax.set_ylabel(label)
        ax.set_xlabel("time since the sampler started (s)")
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        if key == "cpu":
            ax.set_ylim(0, 100)
        elif ax.lines:
            ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no GPU on the host" if key == "gpu" else "not recorded", ha="center",
                    va="center", transform=ax.transAxes, color="#666666")
    handles = [Line2D([], [], color=colour[c], lw=2, label=c) for c in cases]
    axes[2].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1), fontsize=8, frameon=False,
                   title="case", ncol=max(1, math.ceil(len(cases) / 16)))
    fig.suptitle(f"{team}: resources per case", x=0.02, ha="left")
    fig.tight_layout()
    return fig
