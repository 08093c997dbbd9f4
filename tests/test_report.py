"""The leaderboard files and index.html: written atomically, self-contained, and loading cleanly in a
real headless browser (Debian's Chromium driven by Playwright).

The publishable report is built the organizer's way (``rank_results`` over team folders written through
:mod:`challenge.results`): a team with a GPU and one without, a failed team, a penalised case, a team that
shared its host, and a team named ``a.b_c``. The Chromium test writes a full-page screenshot to
``out/report-screenshot.png`` (repository-relative) and prints its path."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from challenge.files import atomic_write, atomic_write_bytes, atomic_write_text
from challenge.labels import metric_columns
from challenge.nifti import Geometry, write_label
from challenge.results import Attempt, RunRecord, team_dir, write_json, write_team_status
from evaluator.leaderboard import LeaderboardSettings, rank_results
from evaluator.ranking import RankingSettings, TeamResults, rank
from evaluator.report import write_leaderboard
from evaluator.report_facts import (
    busy_attempts,
    cases_needed,
    harness_commit,
    significance_unreachable,
    strip_paths,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "out" / "report-screenshot.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]


def _tables(rng, n_cases, quality):
    cases = [f"Case_{i:03d}" for i in range(n_cases)]
    metrics = pd.DataFrame({c: rng.uniform(quality - 0.1, quality, n_cases) for c in metric_columns()})
    metrics.insert(0, "Name", cases)
    metrics["DSC_mean"] = metrics[[c for c in metric_columns() if c.endswith("_DSC")]].mean(axis=1)
    metrics["NSD_mean"] = metrics[[c for c in metric_columns() if c.endswith("_NSD")]].mean(axis=1)
    metrics["status"] = "ok"
    eff = pd.DataFrame({"Name": cases, "Time": rng.uniform(5, 9, n_cases), "AUC_GPU_Time_tol2G": 0.0,
                        "AUC_CPU_Time": rng.uniform(100, 200, n_cases), "status": "ok"})
    return cases, metrics, eff


@pytest.fixture
def leaderboard(tmp_path):
    rng = np.random.default_rng(1)
    teams, metrics, curves = [], {}, {}
    for name, quality in [("alpha", 0.95), ("beta", 0.85), ("gamma<script>", 0.9)]:
        cases, m, e = _tables(rng, 6, quality)
        teams.append(TeamResults(name, m, e))
        metrics[name] = m
        curves[name] = {c: {"t": [0, 0.1, 0.2], "gpu": [None, None, None], "cpu": [5, 60, 10]} for c in cases}
    teams.append(TeamResults("broken", None, None, note="image failed to load: no such archive"))
    ranking = rank(teams, cases, RankingSettings(bootstrap_samples=200))
    index = write_leaderboard(ranking, tmp_path / "board", metrics, curves, {"mode": "flare22"})
    return index, ranking


def test_files_are_written_and_consistent(leaderboard):
    index, ranking = leaderboard
    out = index.parent
    assert sorted(p.name for p in out.iterdir()) == ["bootstrap_ranks.csv", "case_ranks.csv", "index.html",
                                                     "leaderboard.csv", "leaderboard.json", "pairwise.csv"]
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["team"].tolist() == ranking.leaderboard.index.tolist()
    assert board["team"].iloc[-1] == "broken"
    payload = json.loads((out / "leaderboard.json").read_text())
    assert payload["settings"] == {"mode": "flare22"}
    assert set(payload["rank_distribution"]) == {"alpha", "beta", "gamma<script>", "broken"}
    assert sum(payload["rank_distribution"]["alpha"].values()) == pytest.approx(1.0)


def test_page_is_self_contained_and_escaped(leaderboard):
    page = leaderboard[0].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing from the network
    assert "<script>" not in page and "gamma&lt;script&gt;" in page
    assert page.count("data:image/png;base64,") >= 4


def _browser_or_skip():
    """Playwright's API; skip locally without Debian's chromium or playwright, fail under CI."""
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    missing = "playwright (pip)" if sync_api is None else None if shutil.which(CHROMIUM) else "chromium (apt)"
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{missing} is not installed")
    return sync_api


def test_page_loads_in_headless_chromium_without_errors(leaderboard):
    playwright = _browser_or_skip()
    index, ranking = leaderboard
    errors, requests = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        page = browser.new_page()
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", lambda req: requests.append(req.url))
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        rows = page.locator("#leaderboard tbody tr td.team").all_inner_texts()
        broken_images = page.evaluate("Array.from(document.images).filter(i => !i.complete || !i.naturalWidth).length")
        browser.close()
    assert errors == []
    assert rows == ranking.leaderboard.index.tolist()
    assert broken_images == 0
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


# --- the organizer's report, from team folders ---------------------------------------------------------------

@dataclass
class Spec:
    """A synthetic team folder: its accuracy, whether it used a GPU or shared its host, its penalised cases,
    whether its run record is of an older run (no host_load), or why it failed (team_status.json)."""

    name: str
    quality: float = 0.9
    gpu: bool = False
    busy: bool = False
    penalised: tuple[str, ...] = ()
    old_run: bool = False
    failed: bool = False


MAIN = [Spec("gpu-team", 0.95, gpu=True), Spec("cpu-only", 0.9, penalised=("Case_002",)),
        Spec("busy", 0.85, busy=True), Spec("a.b_c", 0.8, old_run=True), Spec("broken", failed=True)]
GRID = Geometry((4, 4, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 2, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    plt.close(fig)
    return buf.getvalue()


def _efficiency(rng, spec: Spec, cases: list[str], base: pd.DataFrame) -> pd.DataFrame:
    n = len(cases)
    gpu_mem = rng.uniform(3000, 6000, n) if spec.gpu else np.full(n, np.nan)
    eff = pd.DataFrame({"Name": cases, "Time": base["Time"], "GPU_Mem": gpu_mem.round(),
                        "AUC_GPU_Time": (gpu_mem * base["Time"]).round(),
                        "AUC_GPU_Time_tol2G": ((gpu_mem - 2048) * base["Time"]).round(2),
                        "CPU_Utilization": rng.uniform(60, 99, n).round(2), "AUC_CPU_Time": base["AUC_CPU_Time"],
                        "RAM": rng.uniform(2500, 4000, n).round(2), "AUC_RAM_Time": 20000.0, "status": "ok"})
    eff.loc[eff["Name"].isin(spec.penalised), "status"] = "error: exit code 1"
    return eff


def _record(rng, case: str, status: str, row: pd.Series) -> dict:
    t = np.round(np.arange(0, float(row["Time"]), 0.1), 2)
    ramp = np.minimum(1.0, t / 2)
    gpu = [None] * len(t) if np.isnan(row["GPU_Mem"]) else (ramp * row["GPU_Mem"]).round().tolist()
    cpu = np.clip(rng.normal(70, 15, len(t)), 0, 99.5).round(2)
    ram = (2000 + ramp * (row["RAM"] - 2000)).round(1)
    return {"case": case, "run_id": "run-1", "status": status, "finished": True, "log_file": f"{case}.log",
            "series": {"interval_s": 0.1, "t": t, "gpu_device_mib": gpu, "ram_used_mib": ram}, "cpu_percent": cpu}


def _host_load(spec: Spec) -> list[dict | None]:
    busy = {"other_cores_mean": 1.6, "other_cores_max": 3.2, "load1_max": 4.5, "busy": True}
    quiet = {"other_cores_mean": 0.05, "other_cores_max": 0.3, "load1_max": 0.4, "busy": False}
    return [busy, None] if spec.busy else [quiet]


def _write_team(root: Path, spec: Spec, rng, png: bytes, n_cases: int) -> None:
    """One team folder under root/results, through challenge.results (and challenge.files for tables)."""
    team = team_dir(root / "results", spec.name)
    team.path.mkdir(parents=True)
    if spec.failed:
        write_team_status(team, f"image failed to load: {root}/teams/{spec.name}.tar.gz: not a docker image archive")
        return
    cases, metrics, base = _tables(rng, n_cases, spec.quality)
    eff = _efficiency(rng, spec, cases, base)
    atomic_write(team.metrics_csv, lambda f: metrics.to_csv(f, index=False))
    atomic_write(team.efficiency_csv, lambda f: eff.to_csv(f, index=False))
    for case, (_, row) in zip(cases, eff.iterrows(), strict=True):
        write_json(team.case_record(case), _record(rng, case, str(row["status"]), row))
        atomic_write_text(team.case_log(case), f"reading {root}/images/{case}_0000.nii.gz\nwrote {case}.nii.gz\n")
        atomic_write_bytes(team.plot(case), png)
    settings = {"inputs": str(root / "images"), "results": str(root / "results"), "timeout_s": 3600}
    if spec.old_run:  # written by an older monitor: its attempts have no host_load
        write_json(team.run_json, {"schema": 1, "run_id": "run-1", "team": spec.name, "cases": cases,
                                   "settings": settings, "attempts": [{"run_id": "run-1", "status": "complete"}]})
        return
    attempts = [Attempt("run-1", status="complete", host_load=load) for load in _host_load(spec)]
    RunRecord("run-1", spec.name, cases, settings, command=f"python {root}/team.py {{inputs}} {{outputs}}",
              attempts=attempts).save(team)


def _publish(root: Path, specs: list[Spec], n_cases: int) -> Path:
    """Team folders, a tiny GT and the leaderboard, the organizer's way (rank_results); the index's path."""
    rng, png = np.random.default_rng(7), _png()
    (root / "labels").mkdir(parents=True)
    for i in range(n_cases):
        write_label(np.zeros(GRID.shape, np.uint8), GRID, root / "labels" / f"Case_{i:03d}.nii.gz")
    for spec in specs:
        _write_team(root, spec, rng, png, n_cases)
    settings = LeaderboardSettings(ranking=RankingSettings(bootstrap_samples=200), title="Test <challenge> 2025")
    return rank_results(root / "results", root / "labels", root / "leaderboard", settings).index


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    return _publish(tmp_path_factory.mktemp("main"), MAIN, 8)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[int, Path]:
    """Two teams on 3 cases (no pair can be significant) and on 8 (it can)."""
    return {n: _publish(tmp_path_factory.mktemp(f"pair{n}"), [Spec("one", 0.95), Spec("two", 0.85)], n)
            for n in (3, 8)}


def test_the_report_copies_each_teams_plots_and_logs(published):
    out = published.parent
    assert {p.name for p in out.iterdir()} == {"bootstrap_ranks.csv", "case_ranks.csv", "index.html", "teams",
                                               "leaderboard.csv", "leaderboard.json", "pairwise.csv"}
    assert sorted(p.name for p in (out / "teams").iterdir()) == ["a.b_c", "busy", "cpu-only", "gpu-team"]
    assert len(list((out / "teams/a.b_c/plots").glob("Case_*.png"))) == 8
    log = (out / "teams/busy/logs/Case_000.log").read_text()
    assert log.startswith("reading Case_000_0000.nii.gz") and str(out.parent) not in log
    board = pd.read_csv(out / "leaderboard.csv")
    assert board["team"].tolist()[-1] == "broken"
    assert list(board.columns) == ["team", "score", "rank", *[c for m in ["DSC", "NSD", "Time", "AUC_GPU_Time_tol2G",
                                   "AUC_CPU_Time"] for c in (f"mean_rank_{m}", m)], "failed_cases", "cases", "status"]
    assert json.loads((out / "leaderboard.json").read_text())["settings"]["title"] == "Test <challenge> 2025"


def test_report_facts():
    assert strip_paths("failed to load: /tmp/x/teams/junk.tar.gz: bad") == "failed to load: junk.tar.gz: bad"
    assert strip_paths("MiB/s, and/or https://flare22.grand-challenge.org/Evaluation") == \
        "MiB/s, and/or https://flare22.grand-challenge.org/Evaluation"
    assert strip_paths('{"inputs": "/data/ct/images"}') == '{"inputs": "images"}'
    assert significance_unreachable(3, 2, 0.05) and not significance_unreachable(8, 2, 0.05)
    assert significance_unreachable(8, 5, 0.05)  # 20 ordered pairs: 20 / 256 >= 0.05
    assert not significance_unreachable(3, 1, 0.05) and cases_needed(2, 0.05) == 6
    assert busy_attempts(None) == [] and busy_attempts(RunRecord("r", "t", [], {}, attempts=[Attempt("r")])) == []


def test_the_commit_is_found_or_unknown(tmp_path):
    assert harness_commit(tmp_path) == "unknown"  # not a git checkout
    (tmp_path / ".git").write_text("gitdir: /nowhere\n")
    assert harness_commit(tmp_path) == "unknown"  # git fails: still an answer
    assert re.fullmatch(r"[0-9a-f]{4,40}|unknown", harness_commit())


def _absolute_paths(text: str) -> list[str]:
    """Absolute POSIX paths in ``text`` (at least two components), data: URIs left out."""
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    return re.findall(r"(?<![\w.:/~%<-])/(?:[\w.-]+/)+[\w.-]*", text)


def test_the_published_report_in_headless_chromium(published, pairs):
    playwright = _browser_or_skip()
    teams = [s.name for s in MAIN]
    errors, requests = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("request", lambda req: requests.append(req.url))
        page.goto(published.as_uri())
        page.wait_for_load_state("load")
        sections = page.eval_on_selector_all("body > section[id]", "els => els.map(e => e.id)")
        ranked = page.locator("#leaderboard td.team").all_inner_texts()
        anchors = page.eval_on_selector_all("#leaderboard td.team a", "as => as.map(a => a.getAttribute('href'))")
        case_rows = {t: page.evaluate("id => document.getElementById(id).querySelectorAll('tbody tr').length",
                                      f"team-{t}-cases") for t in teams}
        busy = page.evaluate("Array.from(document.querySelectorAll('#leaderboard tr'))"
                             ".filter(r => r.innerText.includes('shared the host')).map(r => r.cells[1].innerText)")
        busy_section = page.locator('[id="team-busy"] p.flag').inner_text()
        files = page.eval_on_selector_all("section.team a[href]", "as => as.map(a => a.getAttribute('href'))")
        warning = page.locator("#significance-warning").count()
        cut = page.evaluate("(e => e.scrollWidth - e.clientWidth)(document.querySelector('#ranking .wide'))")
        broken_images = page.evaluate("Array.from(document.images).filter(i => !i.complete || !i.naturalWidth).length")
        source, text = page.content(), page.inner_text("body")
        page.click('#leaderboard a[href="#team-a.b_c"]')
        jumped = page.evaluate("[location.hash, document.getElementById('team-a.b_c').getBoundingClientRect().top]")
        page.evaluate("window.scrollTo(0, 0)")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        warnings = {}
        for n, index in pairs.items():
            page.goto(index.as_uri())
            page.wait_for_load_state("load")
            warnings[n] = page.locator("#significance-warning").count()
        browser.close()
    print(f"screenshot: {SCREENSHOT}")
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert sections == ["ranking", "organs", "efficiency", "case-scores", "stability", "significance", "teams",
                        "settings"]
    assert sorted(ranked) == sorted(teams) and ranked[-1] == "broken" and "Test <challenge> 2025" in text
    assert anchors == [f"#team-{t}" for t in ranked]
    assert case_rows == {t: 8 for t in teams}
    assert busy == ["busy"] and "shared the host with other load" in busy_section
    assert jumped[0] == "#team-a.b_c" and -2 < jumped[1] < 900  # the link brought its section into view
    assert warning == 1 and warnings == {3: 1, 8: 0}
    assert broken_images == 0 and cut <= 0  # the ranking table fits a 1300-pixel window
    root = published.parent.parent
    for leak in (str(root), "/tmp/", str(REPO)):
        assert leak not in source and leak not in text, leak
    assert _absolute_paths(source) == [] and _absolute_paths(text) == []
    assert len(files) == 4 * 8 * 2  # a plot and a log per case of the 4 teams that ran
    for href in files:
        assert not urllib.parse.urlparse(href).scheme and not href.startswith("/")
        assert (published.parent / urllib.parse.unquote(href)).is_file(), href
