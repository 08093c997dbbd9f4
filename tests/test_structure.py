"""The project's seams, checked on its source: no import cycle, every write through the one atomic writer,
no absolute host paths, and one flag vocabulary in every command's ``--help``."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("challenge", "phantoms", "predictor", "resource_monitor", "evaluator", "organizer")
# Which package may import which: challenge is the base; the organizer alone imports the monitor and the
# evaluator; nothing imports the organizer.
ALLOWED = {
    "challenge": set(),
    "phantoms": {"challenge"},
    "predictor": {"challenge"},
    "resource_monitor": {"challenge"},
    "evaluator": {"challenge"},
    "organizer": {"challenge", "resource_monitor", "evaluator"},
}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its file (function-level imports too)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(f"{target}."):  # a parent runs first anyway
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_packages_or_modules():
    graph = _graph()
    packages = {p: {m.split(".")[0] for n, deps in graph.items() if n.split(".")[0] == p for m in deps} - {p}
                for p in PACKAGES}
    for package, deps in packages.items():
        assert deps <= ALLOWED[package], f"{package} imports {sorted(deps - ALLOWED[package])}"
    assert _cycle(packages) is None
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# --- every write through challenge.files ----------------------------------------------------------------

WRITE_METHODS = {"write_text", "write_bytes", "savefig"}
WRITE_CALLS = {("torch", "save"), ("sitk", "WriteImage"), ("np", "save"), ("np", "savez"), ("gzip", "open")}
ATOMIC = {"atomic_path", "atomic_write", "atomic_write_binary", "atomic_write_text", "atomic_write_bytes"}
SCRATCH = {"BytesIO", "NamedTemporaryFile", "TemporaryFile", "TemporaryDirectory"}


def _mode(call: ast.Call, position: int) -> str:
    for keyword in call.keywords:
        if keyword.arg == "mode" and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
    if len(call.args) > position and isinstance(call.args[position], ast.Constant):
        return str(call.args[position].value)
    return "r"


def _is_write(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Name) and func.id == "open":
        return any(c in _mode(call, 1) for c in "wax")
    if not isinstance(func, ast.Attribute):
        return False
    owner = func.value.id if isinstance(func.value, ast.Name) else ""
    if func.attr == "open" and owner != "gzip":  # Path.open(mode)
        return any(c in _mode(call, 0) for c in "wax")
    if (owner, func.attr) == ("gzip", "open"):
        return any(c in _mode(call, 1) for c in "wax")
    return func.attr in WRITE_METHODS or (owner, func.attr) in WRITE_CALLS


def _bound_safely(name: str, scope: ast.AST, depth: int = 0) -> bool:
    """``name`` is a temporary from the atomic writer or a scratch object (``with atomic_path(...) as name``,
    ``with NamedTemporaryFile(...) as name``, ``name = io.BytesIO()``), or a path made from one
    (``name = Path(scratch_folder) / "x"``)."""
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and depth < 3 and any(isinstance(t, ast.Name) and t.id == name
                                                              for t in node.targets):
            used = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            if any(_bound_safely(other, scope, depth + 1) for other in used - {name}):
                return True
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                callee = getattr(call, "func", None)
                called = getattr(callee, "id", getattr(callee, "attr", ""))
                if isinstance(item.optional_vars, ast.Name) and item.optional_vars.id == name \
                        and called in ATOMIC | SCRATCH:
                    return True
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            callee = node.value.func
            called = getattr(callee, "id", getattr(callee, "attr", ""))
            if called in SCRATCH and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                return True
    return False


def _target_name(call: ast.Call) -> str | None:
    """The name of the file or handle a write call writes to (``str(x)`` and ``x.name`` unwrapped)."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in WRITE_METHODS | {"open"} \
            and not (isinstance(func.value, ast.Name) and func.value.id == "gzip"):
        node = func.value if func.attr != "savefig" else (call.args[0] if call.args else None)
    elif isinstance(func, ast.Attribute) and func.attr in {"save", "savez"}:  # torch.save(obj, f), np.save(f, a)
        torch_save = getattr(func.value, "id", "") == "torch" and len(call.args) > 1
        node = call.args[1] if torch_save else (call.args[0] if call.args else None)
    else:
        node = call.args[0] if call.args else (call.args[1] if len(call.args) > 1 else None)
        if isinstance(func, ast.Attribute) and func.attr == "WriteImage" and len(call.args) > 1:
            node = call.args[1]
    while isinstance(node, ast.Call) and getattr(node.func, "id", "") == "str" and node.args:
        node = node.args[0]
    if isinstance(node, ast.Attribute) and node.attr == "name":
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _unsafe_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_write(n)), key=lambda n: n.lineno)
    for call in calls:
        scope, inside_atomic_lambda = call, False
        while scope in parents:
            scope = parents[scope]
            if isinstance(scope, ast.Lambda) and isinstance(parents.get(scope), ast.Call) and \
                    getattr(parents[scope].func, "id", getattr(parents[scope].func, "attr", "")) in ATOMIC:
                inside_atomic_lambda = True
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                break
        name = _target_name(call)
        if inside_atomic_lambda or (name and _bound_safely(name, scope)):
            continue
        found.append(f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)[:80]}")
    return found


def test_every_write_goes_through_the_atomic_writer():
    offenders = [line for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
                 if path != REPO / "challenge" / "files.py" for line in _unsafe_writes(path)]
    assert offenders == [], "writes outside challenge.files:\n" + "\n".join(offenders)


def test_the_write_scan_finds_raw_writes(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import torch\nfrom pathlib import Path\n"
        "def bad(p, fig, state):\n    Path(p).write_text('x')\n    open(p, 'w').close()\n"
        "    torch.save(state, p)\n    fig.savefig(p)\n    with Path(p).open('ab'): pass\n"
        "def good(p, fig, state):\n    with atomic_path(p) as tmp:\n        fig.savefig(tmp)\n"
        "        torch.save(state, tmp)\n    atomic_write_binary(p, lambda f: torch.save(state, f))\n"
        "    with open(p) as f: f.read()\n")
    global REPO
    old, REPO = REPO, tmp_path
    try:
        found = _unsafe_writes(sample)
    finally:
        REPO = old
    assert [line.split(":")[1] for line in found] == ["4", "5", "6", "7", "8"]


# --- no absolute host paths, no references outside the repository ---------------------------------------

# The development machines' work folder and files outside the repository (written so that this file does
# not match itself); container paths such as an image's root home are not host paths.
HOST_PATH = re.compile(r"(?<![\w$}.])/wor[k]/|\.\./share[d]|(?<![\w/])share[d]/(?:reference|data)/")


def test_no_tracked_file_names_an_absolute_host_path_or_a_file_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in {".pt", ".gz", ".png", ".tar"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{name}:{n}: {line.strip()[:100]}" for n, line in enumerate(text.splitlines(), 1)
                 if HOST_PATH.search(line)]
    assert hits == [], "\n".join(hits)


@pytest.mark.parametrize("line, bad", [  # the bad samples are split so that this file does not hold them
    ("REAL = Path('/wo" "rk/shared/data/real')", True), ("see ../sha" "red/reference/spec.md", True),
    ("cp /wo" "rk/x .", True), ("-v $PWD/inputs/:/workspace/inputs/", False), ('rm -rf "$work/root/var"', False),
])
def test_the_host_path_pattern(line, bad):
    assert bool(HOST_PATH.search(line)) == bad


# --- one flag vocabulary --------------------------------------------------------------------------------

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# Every command, with the flags of the shared vocabulary it must show.
HELP = {
    ("flare-phantoms",): {"--out", "--count", "-q", "-v"},
    ("flare-predict",): {"--images", "--out", "-q", "-v"},
    ("flare-train",): {"--images", "--labels", "--out", "-q", "-v"},
    ("flare-monitor", "run"): {"--images", "--results", "--cases", "-q", "-v"},
    ("flare-evaluate", "score"): {"--gt", "--pred", "--out", "-q", "-v"},
    ("flare-evaluate", "rank"): {"--results", "--labels", "--out", "-q", "-v"},
    ("flare-challenge", "challenge"): {"--images", "--labels", "--out", "--cases", "-q", "-v"},
    ("flare-challenge", "check"): {"--archive", "--image", "--images", "--labels", "--out", "--junit", "--cases",
                                   "-q", "-v"},
}
RETIRED = ("--input ", "--inputs", "--output ", "--gt ", "--cases N", "--cases DIR")


def _help(script: str, sub: tuple[str, ...]) -> str:
    module, _, func = SCRIPTS[script].partition(":")
    code = f"import sys; from {module} import {func} as m; sys.exit(m({[*sub, '--help']!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_console_script_is_listed():
    assert {command[0] for command in HELP} == set(SCRIPTS)


@pytest.mark.parametrize("command", sorted(HELP), ids=" ".join)
def test_help_speaks_the_shared_vocabulary(command):
    text = _help(command[0], command[1:])
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", text))
    assert HELP[command] <= flags, f"missing {sorted(HELP[command] - flags)}"
    if command[0] != "flare-evaluate" or command[1] != "score":
        assert not any(old in text for old in RETIRED), text
    if "--cases" in flags:
        assert "--cases GLOB" in text


@pytest.mark.parametrize("argv, old, new", [
    (["-m", "phantoms", "--out", "{tmp}/p", "--cases", "1", "--shape", "32", "32", "16", "-q"], "--cases", "--count"),
    (["-m", "evaluator", "rank", "--results", "{tmp}/none", "--gt", "{tmp}", "--out", "{tmp}/o"], "--gt", "--labels"),
])
def test_old_spellings_still_work_with_a_one_line_warning(tmp_path, argv, old, new):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert f"warning: {old} is deprecated; use {new}" in done.stderr
    assert "unrecognized arguments" not in done.stderr and "required" not in done.stderr
