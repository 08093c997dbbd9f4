"""The report page (``index.html``): one self-contained, offline HTML file (CSS inline, figures as inline
PNGs, links only to files beside it).

Sections: the title block (challenge name, date, harness version and commit, settings), the ranking table
(units, GPU memory, RAM, mean ranks, status, host-load flags), accuracy per organ (tables and box plots),
efficiency, per-case scores (heatmap), rank stability, pairwise significance (map, table, and a warning
when n cases cannot give a significant pair), one section per team (anchor ``team-<name>``: status,
per-case table, links to the case's plot and log, resource curves) and the full settings.

Every text is HTML-escaped, and absolute paths are cut to their last component
(:func:`evaluator.report_facts.strip_paths`) wherever text from the run reaches the page.
"""

from __future__ import annotations

import html
import json
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from challenge.profile import Profile, default
from evaluator.cohorts import CohortResults
from evaluator.ranking import Ranking
from evaluator.report_facts import (
    BUSY_FLAG,
    DEFAULT_TITLE,
    BusyAttempt,
    Curves,
    TeamFacts,
    TeamFiles,
    cases_needed,
    harness_commit,
    harness_version,
    ordered_pairs,
    significance_unreachable,
    smallest_holm_p,
    strip_paths,
    strip_paths_in,
    team_facts,
    utc_stamp,
)
from evaluator.report_plots import (
    GPU_LABEL,
    GPU_METRIC,
    curves_plot,
    efficiency_plot,
    gpu_used,
    img,
    organ_boxplots,
    score_heatmap,
    significance_map,
    stability_plot,
    team_colours,
    teams_with_ok_cases,
)

SHORT = {"DSC": "DSC", "NSD": "NSD", "Time": "Time", "AUC_GPU_Time_tol2G": "GPU", "AUC_CPU_Time": "CPU",
         "AUC_RAM_Time": "RAM"}
HEADER = {"DSC": "DSC", "NSD": "NSD", "Time": "Time (s)", "AUC_GPU_Time_tol2G": GPU_LABEL,
          "AUC_CPU_Time": "CPU AUC (%·s)", "AUC_RAM_Time": "RAM AUC (MiB·s)"}
FORMAT = {"DSC": "{:.4f}", "NSD": "{:.4f}", "Time": "{:,.2f}", "AUC_GPU_Time_tol2G": "{:,.0f}",
          "AUC_CPU_Time": "{:,.1f}", "AUC_RAM_Time": "{:,.0f}"}
PENALTY_NAMES = {"Time": ("Time", " s"), "AUC_GPU_Time_tol2G": ("GPU AUC", " MiB·s"),
                 "AUC_CPU_Time": ("CPU AUC", " %·s"), "AUC_RAM_Time": ("RAM AUC", " MiB·s")}
CaseLinks = dict[str, dict[str, str]]  # case -> {"plot": href, "log": href}, relative to index.html


@dataclass
class ReportData:
    """Everything the page shows. ``teams`` and ``links`` may be empty (then no GPU memory, RAM, host load or
    links are shown)."""

    ranking: Ranking
    metrics: dict[str, pd.DataFrame]
    curves: dict[str, Curves]
    settings: dict
    teams: dict[str, TeamFiles] = field(default_factory=dict)
    links: dict[str, CaseLinks] = field(default_factory=dict)
    cohorts: CohortResults | None = None

    @property
    def order(self) -> list[str]:
        return [str(t) for t in self.ranking.leaderboard.index]

    @property
    def cases(self) -> list[str]:
        return [str(c) for c in self.ranking.case_scores.columns]

    @property
    def profile(self) -> Profile:
        return self.ranking.settings.profile or default()

    @property
    def metrics_ranked(self) -> tuple[str, ...]:
        return self.ranking.metrics


def short(metric: str) -> str:
    return SHORT.get(metric, metric)


def header(metric: str) -> str:
    return HEADER.get(metric, metric)


def number_format(metric: str) -> str:
    return FORMAT.get(metric, "{:.4f}" if metric.endswith(("_DSC", "_NSD")) else "{:,.4g}")


def penalty_text(profile: Profile) -> str:
    """The ranked metrics' penalties in words, e.g. "DSC 0, NSD 0, Time 3,600 s, ..."."""
    parts = []
    for m in profile.metrics:
        name, unit = PENALTY_NAMES.get(m.name, (m.name, ""))
        parts.append(f"{name} {m.penalty:,.0f}{unit}" if m.penalty == int(m.penalty) else f"{name} {m.penalty:g}{unit}")
    return ", ".join(parts)


def formula(profile: Profile) -> str:
    """The per-case score as HTML, e.g. (r<sub>DSC</sub> + ... + 0.5&middot;r<sub>CPU</sub>) / 4."""
    terms = [("" if m.weight == 1 else f"{m.weight:g}&middot;") + f"r<sub>{html.escape(short(m.name))}</sub>"
             for m in profile.metrics]
    return f"({' + '.join(terms)}) / {profile.normaliser:g}"


def render_page(data: ReportData, now: datetime | None = None) -> str:
    """The whole page. Team and case names reach matplotlib as plain text (mathtext off)."""
    with plt.rc_context({"text.parse_math": False}):
        return _render(data, now)


def esc(value: object) -> str:
    """``value`` as page text: absolute paths cut to their last component, then HTML-escaped."""
    return html.escape(strip_paths(str(value)))


def anchor(team: str) -> str:
    return f"team-{team}"


def team_link(team: str) -> str:
    href = "#" + urllib.parse.quote(anchor(team), safe="-._~")
    return f'<a href="{html.escape(href)}">{html.escape(team)}</a>'


def num(value: object, fmt: str) -> str:
    """``value`` formatted, or an en dash when it is missing or not a finite number."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return fmt.format(number) if np.isfinite(number) else "–"


def _render(data: ReportData, now: datetime | None) -> str:
    facts = {t: team_facts(data.teams[t].efficiency if t in data.teams else None,
                           data.teams[t].run if t in data.teams else None, data.cases) for t in data.order}
    colours = team_colours(data.order)
    sections = [
        ("ranking", "Ranking", ranking_section(data, facts)),
        ("organs", "Accuracy per organ", organ_section(data, colours)),
        *([("cohorts", "Cohorts", cohort_section(data))] if data.cohorts is not None else []),
        ("efficiency", "Efficiency", efficiency_section(data, facts, colours)),
        ("case-scores", "Per-case scores", heatmap_section(data)),
        ("stability", "Rank stability", stability_section(data, colours)),
        ("significance", "Pairwise significance", significance_section(data)),
        ("teams", "Teams", teams_section(data, facts)),
        *([("workers", "Workers", workers_section(data.settings["calibration"]))]
          if data.settings.get("calibration") else []),
        ("settings", "Settings", settings_section(data)),
    ]
    body = "\n".join(f'<section id="{sid}"><h2>{html.escape(title)}</h2>\n{content}\n</section>'
                     for sid, title, content in sections)
    title = str(data.settings.get("title") or DEFAULT_TITLE)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}: leaderboard</title>
<style>{CSS}</style></head>
<body>
{title_block(data, title, now, sections)}
{body}
</body></html>
"""


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1250px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
.meta { color: #555; margin: 0.2em 0; }
nav { margin: 0.8em 0; } nav a { margin-right: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 5px; text-align: right; vertical-align: top; }
th { background: #eee; } th.group { text-align: center; }
td.team, td.text, th.text { text-align: left; } td.team { font-weight: bold; white-space: nowrap; }
td.status { min-width: 11em; } td.files { white-space: nowrap; }
tr.penalised td { background: #fdecea; }
.wide { overflow-x: auto; max-width: 100%; }
.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.6em 1em; margin: 0.8em 0; }
.flag { color: #8a4b00; }
.note { color: #555; font-size: 0.9em; }
section.team { border-top: 1px solid #ddd; margin-top: 1.6em; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; white-space: pre-wrap; font-size: 0.85em; }
"""


def title_block(data: ReportData, title: str, now: datetime | None, sections: list[tuple[str, str, str]]) -> str:
    """Challenge name, date (UTC), harness version and commit, the settings in one line, and the contents."""
    rs = data.ranking.settings
    parts = [f"profile {esc(data.profile.name)} (sha256 {esc(data.profile.sha256[:12])})",
             f"evaluator mode {esc(data.settings['evaluator_mode'])}" if "evaluator_mode" in data.settings else "",
             f"{rs.bootstrap_samples} bootstrap samples (seed {rs.seed})", f"α = {rs.alpha}",
             f"ground truth folder {esc(data.settings['gt_dir'])}" if "gt_dir" in data.settings else "",
             f"results folder {esc(data.settings['results_dir'])}" if "results_dir" in data.settings else ""]
    nav = " ".join(f'<a href="#{sid}">{html.escape(name)}</a>' for sid, name, _ in sections)
    return (f"<header><h1>{esc(title)}</h1>\n"
            f'<p class="meta">Leaderboard of {len(data.order)} team(s) on {len(data.cases)} case(s) &middot; '
            f"generated {esc(utc_stamp(now))} &middot; harness {esc(harness_version())}, commit "
            f"<code>{esc(harness_commit())}</code></p>\n"
            f'<p class="meta">Settings: {"; ".join(p for p in parts if p)} '
            '(<a href="#settings">all settings</a>).</p>\n'
            f"<nav>{nav}</nav></header>\n"
            f"<p>{esc(data.profile.title)}, rank-then-aggregate: per case and metric the teams are ranked (ties "
            f"take the minimum rank); a team's score is the mean over its {len(data.cases)} cases of "
            f"{formula(data.profile)}. Lower is better.</p>")


# --- ranking ------------------------------------------------------------------------------------------------

def ranking_section(data: ReportData, facts: dict[str, TeamFacts]) -> str:
    board, ranked = data.ranking.leaderboard, data.metrics_ranked
    head = ('<tr><th rowspan="2">Rank</th><th rowspan="2" class="text">Team</th><th rowspan="2">Score</th>'
            f'<th colspan="{len(ranked) + 2}" class="group">Mean over cases</th>'
            f'<th colspan="{len(ranked)}" class="group">Mean rank per case</th>'
            '<th rowspan="2">Cases</th><th rowspan="2">Failed cases</th><th rowspan="2" class="text status">Status'
            "</th></tr><tr>"
            + "".join(f"<th>{html.escape(header(m))}</th>" for m in ranked)
            + "<th>GPU memory (MiB)</th><th>RAM (MiB)</th>"
            + "".join(f"<th>{html.escape(short(m))}</th>" for m in ranked) + "</tr>")
    rows = []
    for team, row in board.iterrows():
        team, fact = str(team), facts[str(team)]
        cells = [f"<td>{int(row['rank'])}</td>", f'<td class="team">{team_link(team)}</td>',
                 f"<td>{num(row['score'], '{:.3f}')}</td>"]
        cells += [f"<td>{num(row[m], number_format(m))}</td>" for m in ranked]
        cells += [f"<td>{num(fact.gpu_mem_mib, '{:.0f}')}</td>", f"<td>{num(fact.ram_mib, '{:.0f}')}</td>"]
        cells += [f"<td>{num(row[f'mean_rank_{m}'], '{:.2f}')}</td>" for m in ranked]
        cells += [f"<td>{int(row['cases'])}</td>", f"<td>{int(row['failed_cases'])}</td>",
                  f'<td class="text status">{esc(row["status"])}{_busy_mark(fact)}</td>']
        rows.append(f"<tr>{''.join(cells)}</tr>")
    table = (f'<div class="wide"><table id="leaderboard"><thead>{head}</thead><tbody>{"".join(rows)}</tbody>'
             "</table></div>")
    note = ("<p class=\"note\">Means over all cases, penalised cases at the official worst values "
            f"({html.escape(penalty_text(data.profile))}). GPU memory is each case's peak (efficiency.csv "
            "GPU_Mem: the profile's stable or raw maximum) and RAM the peak system RAM used, both measured and "
            "averaged over the cases the team ran (not necessarily ranked; "
            "&ndash; where there is no figure, e.g. no GPU on the host). Mean rank per case: 1 is best.</p>")
    return table + note + _not_ranked(data.settings.get("not_ranked"))


def _busy_mark(fact: TeamFacts) -> str:
    return f'<div class="flag">⚠ {html.escape(BUSY_FLAG)}</div>' if fact.busy else ""


def _not_ranked(skipped: object) -> str:
    if not isinstance(skipped, dict) or not skipped:
        return ""
    items = "".join(f"<li><b>{esc(name)}</b>: {esc(reason)}</li>" for name, reason in skipped.items())
    return f"<p>Not ranked:</p><ul>{items}</ul>"


# --- accuracy per organ ------------------------------------------------------------------------------------

def organ_section(data: ReportData, colours: dict[str, tuple]) -> str:
    teams = [t for t in data.order if t in data.metrics and not data.metrics[t].empty]
    if not teams:
        return "<p>No team was scored.</p>"
    legend = ", ".join(f"<b>{html.escape(o.short)}</b> {html.escape(o.name)}" for o in data.profile.labels
                       if o.short.lower() != o.name)
    unscored = [t for t in data.order if t not in teams]
    parts = [f"<p>Mean &plusmn; standard deviation over the scored cases (metrics.csv) of each team. Organ "
             f"abbreviations (plots and CSV columns): {legend}.</p>"]
    if unscored:
        parts.append(f"<p>Not scored: {', '.join(html.escape(t) for t in unscored)}.</p>")
    for kind in ("DSC", "NSD"):
        parts.append(f"<h3>{kind}</h3>" + organ_table(data, teams, kind))
    parts.append(img(organ_boxplots(data.metrics, teams, colours, data.profile.labels),
                     "Per-organ DSC and NSD box plots per team"))
    return "\n".join(parts)


def organ_table(data: ReportData, teams: list[str], kind: str) -> str:
    """Organs (full name and abbreviation) x teams: mean ± sd of ``kind`` over each team's scored cases."""
    tables = {t: _scored_rows(data.metrics[t], data.cases) for t in teams}
    head = "".join(f"<th>{html.escape(t)} (n = {len(tables[t])})</th>" for t in teams)
    rows = []
    for organ in data.profile.labels:
        cells = "".join(f"<td>{_mean_sd(tables[t], f'{organ.short}_{kind}')}</td>" for t in teams)
        rows.append(f'<tr><td class="text">{html.escape(organ.name)} ({html.escape(organ.short)})</td>{cells}</tr>')
    mean = "".join(f"<td><b>{_mean_sd(tables[t], f'{kind}_mean')}</b></td>" for t in teams)
    counted = data.profile.mean_labels
    what = f"mean of the {len(counted)} organs" if len(counted) == len(data.profile.labels) else \
        f"mean of the {len(counted)} labels counted ({', '.join(o.short for o in counted)})"
    rows.append(f'<tr><td class="text"><b>{html.escape(what)}</b></td>{mean}</tr>')
    return (f'<div class="wide"><table class="organs" id="organs-{kind}"><thead><tr><th class="text">organ</th>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _scored_rows(table: pd.DataFrame, cases: list[str]) -> pd.DataFrame:
    return table[table["Name"].astype(str).isin(set(cases))] if "Name" in table.columns else table


def _mean_sd(table: pd.DataFrame, column: str) -> str:
    values = pd.to_numeric(table[column], errors="coerce").dropna() if column in table.columns else pd.Series()
    if values.empty:
        return "–"
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return f"{float(values.mean()):.3f} &plusmn; {sd:.3f}"


# --- cohorts ------------------------------------------------------------------------------------------------

def cohort_section(data: ReportData) -> str:
    """Per team: the overall rank beside its rank, DSC and NSD on each cohort's cases; then the per-team tests
    of a difference between cohorts."""
    results = data.cohorts
    assert results is not None
    table = results.table.set_index(["team", "cohort"])
    names = results.cohorts
    counts = {c: int(table.xs(c, level="cohort")["cases"].iloc[0]) for c in names}
    head = ('<tr><th rowspan="2" class="text">Team</th><th rowspan="2">Overall rank</th>'
            + "".join(f'<th colspan="3" class="group">{esc(c)} (n = {counts[c]})</th>' for c in names)
            + '<th rowspan="2">Kruskal&ndash;Wallis p (DSC)</th></tr><tr>'
            + "<th>Rank</th><th>DSC</th><th>NSD</th>" * len(names) + "</tr>")
    tests = results.tests
    rows = []
    for team in data.order:
        cells = [f'<td class="team">{team_link(team)}</td>',
                 f"<td>{num(table.loc[(team, names[0]), 'overall_rank'], '{:.0f}')}</td>"]
        for c in names:
            cells += [f"<td>{num(table.loc[(team, c), 'rank'], '{:.0f}')}</td>"]
            cells += [f"<td>{num(table.loc[(team, c), m] if m in table.columns else None, '{:.4f}')}</td>"
                      for m in ("DSC", "NSD")]
        kw = tests[(tests["team"] == team) & (tests["metric"] == "DSC") & (tests["test"] == "kruskal")]
        cells.append(f"<td>{num(kw['p_value'].iloc[0] if len(kw) else None, '{:.3g}')}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    pairs = tests[(tests["test"] == "mannwhitney") & (tests["p_holm"] < data.ranking.settings.alpha)]
    found = ("".join(f"<li>{esc(r.team)}, {esc(r.metric)}: {esc(r.cohort_a)} vs {esc(r.cohort_b)}, "
                     f"Holm-adjusted p = {r.p_holm:.3g}</li>" for r in pairs.itertuples())
             or f"<li>none at &alpha; = {data.ranking.settings.alpha}</li>")
    return ("<p>Each team's rank among all teams on each cohort's cases alone (the mean of its per-case scores "
            "there), with its mean DSC and NSD there as ranked (penalised cases at their worst values). "
            "Kruskal&ndash;Wallis: does the team's per-case DSC differ between cohorts? Pairwise two-sided "
            "Mann&ndash;Whitney U tests, Holm-adjusted per team (cohort_tests.csv has every test, DSC and NSD).</p>"
            f'<div class="wide"><table id="cohorts"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
            f"</div><p>Cohort differences within a team (Mann&ndash;Whitney, Holm):</p><ul>{found}</ul>")


# --- efficiency, case scores, stability, significance --------------------------------------------------------

def efficiency_section(data: ReportData, facts: dict[str, TeamFacts], colours: dict[str, tuple]) -> str:
    ranking = data.ranking
    with_gpu = gpu_used(ranking)
    shown = teams_with_ok_cases(ranking)
    ranked = [m.name for m in data.profile.metrics if m.table == "efficiency"]
    names = ", ".join(html.escape(header(m)) for m in ranked)
    parts = [f"<p>The ranked efficiency figures ({names}) of every case that ran ok, per case and team. "
             "Penalised cases take the official worst values and are not drawn.</p>"]
    if not with_gpu and GPU_METRIC in ranked:
        why = ("no case that ran ok went above the 2 GiB GPU tolerance"
               if any(f.gpu_mem_mib is not None for f in facts.values())
               else "no GPU figure was recorded on any case (no GPU on the host)")
        parts.append(f"<p>The GPU panel is omitted: {why}, so every such case counts 0 MiB&middot;s and the teams "
                     "tie on the GPU rank.</p>")
    left_out = [t for t in data.order if t not in shown]
    if left_out:
        parts.append("<p>Not drawn, with no case that ran ok: "
                     f"{', '.join(html.escape(t) for t in left_out)}.</p>")
    parts.append(img(efficiency_plot(ranking, colours, with_gpu), "The ranked efficiency figures per case and team"))
    return "\n".join(parts)


def heatmap_section(data: ReportData) -> str:
    return ("<p>Each team's composite score on each case, (r<sub>DSC</sub> + r<sub>NSD</sub> + r<sub>Time</sub> + "
            "0.5&middot;r<sub>GPU</sub> + 0.5&middot;r<sub>CPU</sub>) / 4: 1 when it is best on every metric, the "
            "number of teams when it is last on every one. The team's score is the mean of its row. Per-case "
            "values and ranks: each team's section below, and case_ranks.csv.</p>"
            + img(score_heatmap(data.ranking), "Per-case score heatmap, teams by cases"))


def stability_section(data: ReportData, colours: dict[str, tuple]) -> str:
    ranking = data.ranking
    tau = ranking.kendall_tau
    if len(tau) == 0 or np.isnan(tau).all():
        text = "<p>Kendall's &tau; needs at least two teams.</p>"
    else:
        text = (f"<p>{len(tau)} bootstrap samples of the cases. Kendall's &tau; between the bootstrap rankings and "
                f"the full ranking: median {np.nanmedian(tau):.3f}, mean {np.nanmean(tau):.3f}, 5th percentile "
                f"{np.nanpercentile(tau, 5):.3f}.</p>")
    return img(stability_plot(ranking, colours), "Bootstrap rank distribution") + text


def significance_warning(n_cases: int, n_teams: int, alpha: float) -> str:
    """The warning shown when no Holm-corrected one-sided pair test can reach ``alpha`` on ``n_cases``; ""
    otherwise."""
    if not significance_unreachable(n_cases, n_teams, alpha):
        return ""
    m = ordered_pairs(n_teams)
    return ('<div class="warning" id="significance-warning"><b>Too few cases for significance.</b> With '
            f"n = {n_cases} cases the smallest p-value a one-sided Wilcoxon signed-rank test can give is "
            f"2<sup>&minus;{n_cases}</sup> = {2.0 ** -n_cases:.3g}; Holm's correction over the m = {m} ordered "
            f"pairs tested multiplies it by m, so no pair can fall below {smallest_holm_p(n_cases, n_teams):.3g} "
            f"&ge; &alpha; = {alpha}. No difference can be called significant whatever the results; that needs "
            f"at least {cases_needed(n_teams, alpha)} cases.</div>")


def significance_section(data: ReportData) -> str:
    ranking = data.ranking
    if ranking.pairwise.empty:
        return "<p>One team: no pairs to test.</p>"
    warning = significance_warning(len(data.cases), len(data.order), ranking.settings.alpha)
    intro = ("<p>Holm-adjusted p-values of one-sided Wilcoxon signed-rank tests on the per-case scores: is the row "
             f"team better than the column team? (bold: p &lt; {ranking.settings.alpha}).</p>")
    return warning + intro + img(significance_map(ranking), "Significance map") + _pairwise_table(ranking)


def _pairwise_table(ranking: Ranking) -> str:
    teams = [str(t) for t in ranking.leaderboard.index]
    lookup = ranking.pairwise.set_index(["team", "versus"])["p_holm"]
    alpha = ranking.settings.alpha
    head = "".join(f"<th>{html.escape(t)}</th>" for t in teams)
    rows = []
    for a in teams:
        cells = "".join("<td>&ndash;</td>" if a == b else
                        f"<td>{'<b>' if lookup[(a, b)] < alpha else ''}{lookup[(a, b)]:.3g}"
                        f"{'</b>' if lookup[(a, b)] < alpha else ''}</td>" for b in teams)
        rows.append(f'<tr><td class="team">{html.escape(a)}</td>{cells}</tr>')
    return (f'<div class="wide"><table id="pairwise"><thead><tr><th class="text">better?</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


# --- teams --------------------------------------------------------------------------------------------------

def teams_section(data: ReportData, facts: dict[str, TeamFacts]) -> str:
    intro = ("<p>Per team: its status; every case with the values that were ranked (penalised cases at the worst "
             "values), the measured GPU memory and RAM, its ranks and score on the case, the reason of any "
             "penalty, and links to the case's resource plot and log (copies beside this page, under "
             "teams/).</p>")
    return intro + "\n".join(team_section(data, team, facts[team]) for team in data.order)


def team_section(data: ReportData, team: str, fact: TeamFacts) -> str:
    """One team: anchor ``team-<name>``, status, host-load flag, run, per-case table and resource curves."""
    row = data.ranking.leaderboard.loc[team].to_dict()
    files = data.teams.get(team, TeamFiles())
    parts = [f'<section class="team" id="{html.escape(anchor(team))}">',
             f"<h3>{num(row['rank'], '{:.0f}')}. {html.escape(team)}</h3>",
             f"<p>Status: <b>{esc(row['status'])}</b> &middot; score {num(row['score'], '{:.3f}')} &middot; "
             f"{num(row['cases'], '{:.0f}')} cases, {num(row['failed_cases'], '{:.0f}')} penalised.</p>"]
    if fact.busy:
        parts.append(f'<p class="flag">⚠ {html.escape(team)} {html.escape(BUSY_FLAG)}.</p>'
                     + "<ul class=\"flag\">" + "".join(f"<li>{_busy_line(b)}</li>" for b in fact.busy) + "</ul>")
    parts.append(_run_line(files))
    parts.append(case_table(data, team, files))
    curves = data.curves.get(team) or {}
    parts.append(img(curves_plot(team, curves), f"Resource curves of {team}, per case") if curves else
                 "<p>No resource curves (no case record).</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _busy_line(busy: BusyAttempt) -> str:
    return (f"attempt started {esc(_when(busy.started_utc))}: other processes used "
            f"{num(busy.other_cores_mean, '{:.2f}')} cores on average (at most "
            f"{num(busy.other_cores_max, '{:.2f}')}); 1-minute load average up to {num(busy.load1_max, '{:.2f}')}")


def workers_section(calibration: dict) -> str:
    """The cluster's workers and their calibration: the same fixed CPU load on each, one at a time."""
    workers = calibration["workers"]
    mode = next(iter(workers.values()))["mode"] if workers else "-"
    rows = "".join(
        f'<tr><td class="text">{esc(name)}</td><td class="text">{esc(row["host"])}</td>'
        f'<td>{row["seconds"]:.2f}</td><td>{100 * row["deviation"]:+.1f} %</td>'
        f'<td class="text">{"<b>off the median</b>" if row["flagged"] else "ok"}</td></tr>'
        for name, row in sorted(workers.items()))
    intro = (f"Before the teams, every worker ran the same fixed CPU load ({esc(mode)} mode), one worker at a "
             f"time; a worker more than {100 * calibration['tolerance']:.0f} % off the median "
             f"({calibration['median_s']:.2f} s) is flagged. Each team's section names the worker and host it "
             "ran on.")
    return (f"<p>{intro}</p><table><thead><tr><th>worker</th><th>host</th><th>time (s)</th>"
            f"<th>off the median</th><th>calibration</th></tr></thead><tbody>{rows}</tbody></table>")


def _where(attempt) -> str:
    """`` on host H, worker W`` and the moves of an attempt on a cluster ("" on one host)."""
    if not attempt.worker:
        return ""
    moves = "".join(f"; moved from worker {esc(m['from'])} after {m['finished']} case(s): {esc(m['reason'])}"
                    for m in attempt.moves)
    return f" on host {esc(attempt.host)}, worker {esc(attempt.worker)}{moves}"


def _run_line(files: TeamFiles) -> str:
    run = files.run
    if run is None:
        return '<p class="note">No run record.</p>'
    what = (f"image {esc((run.image or {}).get('tag', ''))}; " if run.image else
            f"command <code>{esc(run.command)}</code>; " if run.command else "")
    attempts = ", ".join(f"{esc(a.status)} (started {esc(_when(a.started_utc))}{_where(a)})" for a in run.attempts)
    return f'<p class="note">Run: {what}{len(run.attempts)} attempt(s): {attempts}.</p>'


def _when(iso: object) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM UTC``; the text itself when it is no such time."""
    try:
        return utc_stamp(datetime.fromisoformat(str(iso)))
    except ValueError:
        return str(iso)


def case_table(data: ReportData, team: str, files: TeamFiles) -> str:
    """The team's cases: status, ranked values, measured GPU memory and RAM, ranks, score, penalty, links."""
    values = data.ranking.values.loc[team]
    ranks = data.ranking.ranks.loc[team]
    scores = data.ranking.case_scores.loc[team]
    efficiency = _by_name(files.efficiency)
    scored = _by_name(data.metrics.get(team))
    links = data.links.get(team, {})
    head = ("<tr><th class=\"text\">Case</th><th class=\"text\">Status</th>"
            + "".join(f"<th>{html.escape(header(m))}</th>" for m in data.metrics_ranked)
            + "<th>GPU memory (MiB)</th><th>RAM (MiB)</th>"
              f"<th>Ranks ({html.escape(', '.join(short(m) for m in data.metrics_ranked))})</th>"
              "<th>Case score</th><th class=\"text\">Penalty</th><th class=\"text\">Files</th></tr>")
    rows = []
    for case in data.cases:
        reason = str(values.loc[case, "penalised"])
        status = _case_status(case, efficiency, scored)
        cells = [f'<td class="text">{html.escape(case)}</td>', f'<td class="text">{esc(status)}</td>']
        cells += [f"<td>{num(values.loc[case, m], number_format(m))}</td>" for m in data.metrics_ranked]
        cells += [f"<td>{num(_cell(efficiency, case, 'GPU_Mem'), '{:.0f}')}</td>",
                  f"<td>{num(_cell(efficiency, case, 'RAM'), '{:.0f}')}</td>",
                  f"<td>{' · '.join(num(ranks.loc[case, m], '{:.0f}') for m in data.metrics_ranked)}</td>",
                  f"<td>{num(scores[case], '{:.2f}')}</td>", f'<td class="text">{esc(reason)}</td>',
                  f'<td class="text files">{_file_links(links.get(case, {}))}</td>']
        row_class = ' class="penalised"' if reason else ""
        rows.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return (f'<div class="wide"><table class="cases" id="{html.escape(anchor(team))}-cases"><thead>{head}</thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _by_name(table: pd.DataFrame | None) -> pd.DataFrame:
    if table is None or table.empty or "Name" not in table.columns:
        return pd.DataFrame()
    return table.assign(Name=table["Name"].astype(str)).drop_duplicates("Name", keep="last").set_index("Name")


def _cell(table: pd.DataFrame, case: str, column: str) -> object:
    return table.loc[case, column] if case in table.index and column in table.columns else None


def _text(value: object) -> str | None:
    """``value`` as text; None when it is missing (None, NaN or NA)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def _case_status(case: str, efficiency: pd.DataFrame, scored: pd.DataFrame) -> str:
    """The run's status of ``case`` (efficiency.csv), with the scoring status when it is not plain "ok"."""
    status = _text(_cell(efficiency, case, "status")) or "no run"
    prediction = _text(_cell(scored, case, "status"))
    if prediction is not None and prediction != "ok":
        status += f"; scored: {prediction}"
    return status


def _file_links(links: dict[str, str]) -> str:
    return " ".join(f'<a href="{html.escape(links[kind])}">{kind}</a>' for kind in ("plot", "log") if kind in links)


# --- settings -----------------------------------------------------------------------------------------------

def settings_section(data: ReportData) -> str:
    settings = strip_paths_in(json.loads(json.dumps(data.settings, default=str)))  # any object as its text
    return ("<p>The exact settings of this ranking and of each team's run (absolute paths cut to their last "
            "component).</p>"
            f"<pre>{html.escape(json.dumps(settings, indent=2, default=str))}</pre>")
