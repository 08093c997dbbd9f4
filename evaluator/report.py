"""Leaderboard files and a self-contained ``index.html`` (no network: plots are inline PNGs, CSS inline).

Writes into LEADERBOARD_DIR: leaderboard.csv, leaderboard.json, case_ranks.csv, bootstrap_ranks.csv,
pairwise.csv and index.html. The page shows the ranking table, per-organ DSC/NSD box plots per team,
an efficiency scatter (time against GPU AUC), the rank-stability plot, the significance table, the
per-case GPU/CPU curves that the resource monitor recorded, and the exact settings used.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from challenge.files import atomic_write
from challenge.labels import ORGANS
from evaluator.ranking import METRICS, Ranking

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

Curves = dict[str, dict[str, list]]  # case -> {"t": [s], "gpu": [MiB], "cpu": [%]}


def write_leaderboard(ranking: Ranking, out_dir: Path, metrics: dict[str, pd.DataFrame],
                      curves: dict[str, Curves], settings: dict) -> Path:
    """Write every leaderboard file into ``out_dir``; returns the path of index.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    board = ranking.leaderboard.reset_index()
    atomic_write(out_dir / "leaderboard.csv", lambda f: board.to_csv(f, index=False))
    payload = {"leaderboard": json.loads(board.to_json(orient="records")),
               "kendall_tau": _tau_summary(ranking.kendall_tau),
               "rank_distribution": _rank_distribution(ranking),
               "settings": settings}
    atomic_write(out_dir / "leaderboard.json", lambda f: json.dump(payload, f, indent=2))
    table = ranking.values.join(ranking.ranks.add_suffix("_rank")).reset_index()
    atomic_write(out_dir / "case_ranks.csv", lambda f: table.to_csv(f, index=False))
    atomic_write(out_dir / "bootstrap_ranks.csv", lambda f: ranking.bootstrap_ranks.to_csv(f, index_label="sample"))
    atomic_write(out_dir / "pairwise.csv", lambda f: ranking.pairwise.to_csv(f, index=False))
    page = render_html(ranking, metrics, curves, settings)
    atomic_write(out_dir / "index.html", lambda f: f.write(page))
    return out_dir / "index.html"


def _tau_summary(tau: np.ndarray) -> dict[str, float] | None:
    """Median, mean and 5th percentile of Kendall's tau over bootstrap samples; None with one team."""
    if len(tau) == 0 or np.isnan(tau).all():
        return None
    return {"median": float(np.nanmedian(tau)), "mean": float(np.nanmean(tau)),
            "p05": float(np.nanpercentile(tau, 5))}


def _rank_distribution(ranking: Ranking) -> dict[str, dict[str, float]]:
    shares = {team: ranking.bootstrap_ranks[team].value_counts(normalize=True).sort_index()
              for team in ranking.bootstrap_ranks.columns}
    return {str(team): {str(int(r)): float(f) for r, f in zip(s.index.to_numpy(), s.to_numpy(), strict=True)}
            for team, s in shares.items()}


# Team and case names reach matplotlib as plain text ("$...$" is never parsed as mathtext); the HTML
# escapes every name.
def render_html(ranking: Ranking, metrics: dict[str, pd.DataFrame], curves: dict[str, Curves],
                settings: dict) -> str:
    with plt.rc_context({"text.parse_math": False}):
        return _render_html(ranking, metrics, curves, settings)


def _render_html(ranking: Ranking, metrics: dict[str, pd.DataFrame], curves: dict[str, Curves],
                 settings: dict) -> str:
    teams = ranking.leaderboard.index.tolist()
    sections = [
        ("Ranking", _ranking_table(ranking)),
        ("Accuracy per organ", _img(_organ_boxplots(metrics, teams), "Per-organ DSC and NSD box plots per team")),
        ("Efficiency", _img(_efficiency_scatter(ranking, teams), "Time against GPU AUC per case")),
        ("Rank stability", _img(_stability_plot(ranking, teams), "Bootstrap rank distribution")
         + _tau_text(ranking)),
        ("Pairwise significance", _pairwise_table(ranking)),
        ("Resource curves", _img(_curves_plot(curves, teams), "GPU memory and CPU utilisation per case")),
        ("Settings", f"<pre>{html.escape(json.dumps(settings, indent=2, default=str))}</pre>"),
    ]
    body = "\n".join(f"<section><h2>{html.escape(t)}</h2>\n{content}</section>" for t, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Leaderboard</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #eee; }} td.team {{ text-align: left; font-weight: bold; }}
img {{ max-width: 100%; }} pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body><h1>Leaderboard</h1>
<p>FLARE22 rank-then-aggregate: per case and metric the teams are ranked (ties take the minimum rank);
a team's score is the mean over {ranking.case_scores.shape[1]} cases of
(r_DSC + r_NSD + r_Time + 0.5&middot;r_GPU + 0.5&middot;r_CPU) / 4. Lower is better.</p>
{body}
</body></html>
"""


def _ranking_table(ranking: Ranking) -> str:
    board = ranking.leaderboard
    cols = ["rank", "score", *METRICS, "failed_cases", "status"]
    fmt = {"score": "{:.3f}", "DSC": "{:.4f}", "NSD": "{:.4f}", "Time": "{:.2f}",
           "AUC_GPU_Time_tol2G": "{:.0f}", "AUC_CPU_Time": "{:.1f}"}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["team", *cols])
    rows = []
    for team, row in board.iterrows():
        cells = "".join(f"<td>{html.escape(fmt.get(c, '{}').format(row[c]))}</td>" for c in cols)
        rows.append(f'<tr><td class="team">{html.escape(str(team))}</td>{cells}</tr>')
    return f'<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _pairwise_table(ranking: Ranking) -> str:
    pw = ranking.pairwise
    if pw.empty:
        return "<p>One team: no pairs to test.</p>"
    teams = ranking.leaderboard.index.tolist()
    lookup = pw.set_index(["team", "versus"])["p_holm"]
    head = "".join(f"<th>{html.escape(t)}</th>" for t in teams)
    rows = []
    for a in teams:
        cells = "".join("<td>&ndash;</td>" if a == b else
                        f"<td>{'<b>' if lookup[(a, b)] < ranking.settings.alpha else ''}{lookup[(a, b)]:.3g}</td>"
                        for b in teams)
        rows.append(f'<tr><td class="team">{html.escape(a)}</td>{cells}</tr>')
    return ("<p>Holm-adjusted p-values of one-sided Wilcoxon signed-rank tests on per-case scores: row team "
            f"better than column team (bold: p &lt; {ranking.settings.alpha}).</p>"
            f"<table><thead><tr><th>better?</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _tau_text(ranking: Ranking) -> str:
    summary = _tau_summary(ranking.kendall_tau)
    if summary is None:
        return "<p>Kendall's &tau; needs at least two teams.</p>"
    return (f"<p>{len(ranking.kendall_tau)} bootstrap samples of the cases. Kendall's &tau; between the bootstrap "
            f"rankings and the full ranking: median {summary['median']:.3f}, mean {summary['mean']:.3f}, "
            f"5th percentile {summary['p05']:.3f}.</p>")


def _img(fig: plt.Figure | None, alt: str) -> str:
    if fig is None:
        return "<p>No data.</p>"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _organ_boxplots(metrics: dict[str, pd.DataFrame], teams: list[str]) -> plt.Figure | None:
    teams = [t for t in teams if t in metrics and not metrics[t].empty]
    if not teams:
        return None
    fig, axes = plt.subplots(2, 1, figsize=(14, 8), sharex=True)
    width = 0.8 / len(teams)
    for ax, kind in zip(axes, ("DSC", "NSD"), strict=True):
        for n, team in enumerate(teams):
            table = metrics[team]
            data = [pd.to_numeric(table[f"{o.short}_{kind}"], errors="coerce").dropna().to_numpy() for o in ORGANS]
            pos = np.arange(len(ORGANS)) + (n - (len(teams) - 1) / 2) * width
            box = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True)
            for patch in box["boxes"]:
                patch.set_facecolor(f"C{n}")
            ax.plot([], [], color=f"C{n}", lw=6, label=team)
        ax.set_ylabel(kind)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower left", ncol=min(len(teams), 6))
    axes[1].set_xticks(range(len(ORGANS)), [o.short for o in ORGANS], rotation=30)
    return fig


def _efficiency_scatter(ranking: Ranking, teams: list[str]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 5))
    values = ranking.values
    for n, team in enumerate(teams):
        ok = values.loc[team][values.loc[team]["penalised"] == ""]
        ax.scatter(ok["Time"], ok["AUC_GPU_Time_tol2G"], color=f"C{n}", label=team, alpha=0.8)
    ax.set_xlabel("Time per case (s)")
    ax.set_ylabel("AUC GPU memory above 2 GiB (MiB·s)")
    ax.set_title("Cases that ran ok (penalised cases omitted)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _stability_plot(ranking: Ranking, teams: list[str]) -> plt.Figure:
    boot = ranking.bootstrap_ranks
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(teams) + 2))
    n_teams = len(teams)
    full_rank = dict(zip(ranking.leaderboard.index, ranking.leaderboard["rank"].to_numpy(dtype=float), strict=True))
    for y, team in enumerate(teams):
        freq = boot[team].value_counts(normalize=True)
        ax.scatter(freq.index.to_numpy(), [y] * len(freq), s=1500 * freq.to_numpy(), color=f"C{y}", alpha=0.7)
        ax.scatter([full_rank[team]], [y], marker="x", color="black")
    ax.set_yticks(range(n_teams), teams)
    ax.set_xticks(range(1, n_teams + 1))
    ax.set_xlim(0.5, n_teams + 0.5)
    ax.invert_yaxis()
    ax.set_xlabel("rank (area: bootstrap frequency; x: full ranking)")
    return fig


def _curves_plot(curves: dict[str, Curves], teams: list[str]) -> plt.Figure | None:
    teams = [t for t in teams if curves.get(t)]
    if not teams:
        return None
    fig, axes = plt.subplots(len(teams), 2, figsize=(12, 2.6 * len(teams)), squeeze=False)
    for row, team in enumerate(teams):
        for case, series in sorted(curves[team].items()):
            t = series.get("t") or []
            for col, key in enumerate(("gpu", "cpu")):
                y = series.get(key)
                if y and len(y) == len(t) and not all(v is None for v in y):
                    axes[row, col].plot(t, [np.nan if v is None else v for v in y], lw=0.8, label=case)
        if not axes[row, 0].lines:
            axes[row, 0].text(0.5, 0.5, "no GPU figures (no GPU on the host)", ha="center",
                              transform=axes[row, 0].transAxes)
        axes[row, 0].set_ylabel(f"{team}\nGPU memory (MiB)")
        axes[row, 1].set_ylabel("CPU used (%)")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time since start (s)")
    return fig

