"""A team's self-check: run a submission exactly as the organizers' run does (the same sandbox, limits and
case folders, through :func:`resource_monitor.monitor.run_team`), then validate every output against its
input, so that a team learns before submitting what would make its cases fail.

Per case, in order: the run's status (with the last lines of its log and a hint when it matches a sandbox
rule, :mod:`resource_monitor.hints`); the output's name (``expected <Case>.nii.gz, found ...``); its header
(``challenge.nifti.read_header``: a readable 3D NIfTI); its grid against the input's (size, spacing,
origin, direction: the first difference named); its label values (integers within 0..13; a type other
than uint8 is a warning, not a failure); and, with ground truth, DSC and NSD (``evaluator.scoring``).
A case passes when all of these do. The JUnit report has one test case per case.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from challenge.cases import image_name, label_name
from challenge.files import atomic_write_bytes
from challenge.labels import MAX_LABEL
from challenge.nifti import NiftiError, read_header, read_labels
from challenge.profile import Profile, default
from challenge.results import TeamDir, read_json
from resource_monitor.hints import explain
from resource_monitor.monitor import run_team, select_cases
from resource_monitor.settings import RunSettings


@dataclass
class Verdict:
    """One case's result: passed or not, why, and what else the team should know."""

    case: str
    passed: bool
    reason: str = ""  # the first thing that failed
    details: list[str] = field(default_factory=list)  # log tail and hint lines of a failed run
    warnings: list[str] = field(default_factory=list)
    scores: str = ""  # "DSC 0.951, NSD 0.972" with ground truth
    time_s: float | None = None

    def lines(self) -> list[str]:
        head = f"PASS {self.case}" if self.passed else f"FAIL {self.case}: {self.reason}"
        extra = [x for x in (self.scores, "" if self.time_s is None else f"Time {self.time_s:.1f} s") if x]
        head += f"  ({', '.join(extra)})" if extra else ""
        return [head, *self.details, *(f"    warning: {w}" for w in self.warnings)]


@dataclass
class CheckSettings:
    run: RunSettings  # the organizers' run settings: image or command, limits, cases
    labels: Path | None = None  # ground truth, for DSC and NSD
    junit: Path | None = None
    mode: str = "flare22"  # the scoring mode for DSC and NSD


def check_output(case: str, output: Path, image: Path, max_label: int = MAX_LABEL) -> tuple[str | None, list[str]]:
    """(the reason the output is invalid or None, warnings) for one collected ``output`` on ``image``'s grid;
    labels 0..``max_label`` (the profile's highest label) are valid."""
    try:
        header = read_header(output)
        grid, expected = header.geometry(), read_header(image).geometry()
    except NiftiError as err:
        return f"unreadable output: {err}", []
    mismatch = expected.mismatch(grid)
    if mismatch is not None:
        return f"grid differs from the input's: {mismatch}", []
    warnings = [] if header.stored == np.uint8 else [f"stored as {header.stored}; uint8 is expected"]
    _, issues = read_labels(output, expected, max_label=max_label)
    if issues.outside or issues.non_integer:
        return (f"label values must be integers 0..{max_label}: {issues.outside} voxels outside, "
                f"{issues.non_integer} not integers"), warnings
    return None, warnings


def _missing_output(case: str, record: dict) -> str:
    found = record.get("unexpected_outputs") or []
    shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
    return f"expected {label_name(case)}, found {shown}" if found else f"expected {label_name(case)}, found nothing"


def judge(case: str, team: TeamDir, images: Path, labels: Path | None, mode: str = "flare22",
          profile: Profile | None = None) -> Verdict:
    """The verdict on one case of a finished run, under ``profile``'s labels (default flare22)."""
    profile = profile or default()
    record = read_json(team.case_record(case))
    status, time_s = record["status"], record["flare22"]["Time"]
    if status != "ok":
        reason = _missing_output(case, record) if status == "no-output" else status
        lines = explain(case, status, record.get("log_tail", []))
        return Verdict(case, False, reason, details=lines[1:], time_s=time_s)
    output = team.outputs / label_name(case)
    reason, warnings = check_output(case, output, images / image_name(case), profile.max_label)
    verdict = Verdict(case, reason is None, reason or "", warnings=warnings, time_s=time_s)
    if verdict.passed and labels is not None and (labels / label_name(case)).is_file():
        from evaluator.scoring import score_case

        score = score_case(labels / label_name(case), output, mode, profile=profile)
        verdict.scores = f"DSC {score.dsc_mean:.3f}, NSD {score.nsd_mean:.3f}"
    return verdict


def run_check(settings: CheckSettings, docker_client=None) -> list[Verdict]:
    """Run the submission on every case, then judge each; writes the JUnit report when asked."""
    result = run_team(settings.run, docker_client)
    cases = list(select_cases(settings.run.inputs, settings.run.cases_glob))  # this run's, not older records
    verdicts = [judge(case, result.team, settings.run.inputs, settings.labels, settings.mode, settings.run.profile)
                for case in cases]
    if settings.junit is not None:
        write_junit(verdicts, settings.junit, suite=f"flare-check {settings.run.team}")
    return verdicts


def write_junit(verdicts: list[Verdict], path: Path, suite: str) -> Path:
    """A JUnit XML report: one test case per case, a failure element (message and details) for each failed."""
    failures = sum(not v.passed for v in verdicts)
    root = ET.Element("testsuite", name=suite, tests=str(len(verdicts)), failures=str(failures), errors="0",
                      time=f"{sum(v.time_s or 0.0 for v in verdicts):.3f}")
    for verdict in verdicts:
        element = ET.SubElement(root, "testcase", classname=suite, name=verdict.case,
                                time=f"{verdict.time_s or 0.0:.3f}")
        if not verdict.passed:
            failure = ET.SubElement(element, "failure", message=verdict.reason)
            failure.text = "\n".join(verdict.lines())
        elif verdict.warnings or verdict.scores:
            ET.SubElement(element, "system-out").text = "\n".join(verdict.lines())
    return atomic_write_bytes(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
