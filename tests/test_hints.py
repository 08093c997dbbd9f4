"""The hints a failed case gets: each sandbox rule is recognised in the status or the log tail a real run
of that kind leaves (the texts are what dash, bash, Python and torch print), and nothing else matches."""

from __future__ import annotations

import pytest

from resource_monitor.hints import explain, hint_for


@pytest.mark.parametrize("status, log, rule", [
    ("error: exit code 1", ["touch: cannot touch '/workspace/inputs/x': Read-only file system"], "read-only inputs"),
    ("error: exit code 1", ["OSError: [Errno 30] Read-only file system: '/workspace/inputs/tmp.npy'"],
     "read-only inputs"),
    ("error: exit code 1", ["bash: connect: Network is unreachable"], "no network"),
    ("error: exit code 1", ["urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name "
                            "resolution>"], "no network"),
    ("no-output", ["predict.sh: 3: [[: not found"], "sh, not bash"),
    ("error: exit code 2", ["predict.sh: 5: Syntax error: \"(\" unexpected"], "sh, not bash"),
    ("error: exit code 2", ["predict.sh: 2: source: not found"], "sh, not bash"),
    ("error: exit code 1", ["RuntimeError: No CUDA GPUs are available"], "no GPU"),
    ("error: out of memory (killed at the 8g limit)", [], "memory limit"),
    ("timeout", ["step 3 of 9"], "time limit"),
    ("error: wrote more than 1024 MiB to /workspace/outputs", [], "disk limit"),
])
def test_each_sandbox_rule_is_recognised(status, log, rule):
    found = hint_for(status, log)
    assert found is not None and found.name == rule


@pytest.mark.parametrize("status, log", [
    ("error: exit code 1", ["predict.sh: 1: basename: not found"]),  # a missing tool, not a bash-ism
    ("error: exit code 1", ["ValueError: bad shape"]),
    ("no-output", []),
])
def test_other_failures_get_no_hint(status, log):
    assert hint_for(status, log) is None


def test_explain_shows_the_verdict_the_log_tail_and_the_hint():
    lines = explain("C1", "error: exit code 1", [f"line {n}" for n in range(20)] + ["Network is unreachable"], 3)
    assert lines[0] == "C1: error: exit code 1"
    assert lines[1:4] == ["    | line 18", "    | line 19", "    | Network is unreachable"]
    assert lines[4].startswith("    hint (no network):")
