"""Challenge profiles: one TOML file per challenge holds its labels, scoring rules, container limits,
efficiency definitions and ranking (docs/profiles.md lists every key and where each number comes from).

Three ship in ``challenge/profiles/``: ``flare22`` (the default; today's numbers bit for bit), ``flare23``
and ``cpu-track``. ``--profile NAME|PATH`` takes a shipped name or the path of a ``.toml`` file of one's own.
A profile is identified by its name and the SHA-256 of its file's bytes (:attr:`Profile.sha256`), which
``run.json``, ``summary.json`` and the report record: a results folder run under one profile is never scored
or ranked under another (:func:`check_same`).

Units: mm, MiB, seconds. Loading validates everything and raises :class:`ProfileError` (a ValueError) with one
line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import tomllib

from challenge.files import read_bounded
from challenge.labels import Organ

SHIPPED_DIR = Path(__file__).with_name("profiles")
DEFAULT = "flare22"
MAX_PROFILE_BYTES = 64 << 10  # a profile is a small text file
MAX_LABEL_ID = 15  # label ids fit the scorer's 16-bit label masks (evaluator.metrics.label_boxes)
GPU_PEAKS = ("stable_max", "raw_max")
MISSING = ("empty", "abort")
TABLES = ("metrics", "efficiency")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")
_SIZE = re.compile(r"\d+(\.\d+)?[bkmg]?")


class ProfileError(ValueError):
    """A profile that cannot be read or is not valid; the message is one line naming the file."""


@dataclass(frozen=True)
class Scoring:
    both_empty: float = 1.0  # DSC and NSD of a label absent from both the GT and the prediction
    nsd_zero_below_dsc: float = 0.0  # the NSD is 0 where the DSC is below this (0: never)
    decimals: int = -1  # per-case values rounded to this many decimals (-1: full precision)
    missing_prediction: str = "empty"  # "empty": scored as an empty mask; "abort": the team's evaluation stops


@dataclass(frozen=True)
class Container:
    command: tuple[str, ...] = ("/bin/bash", "-c", "sh predict.sh")
    memory: str = "28g"  # docker run --memory (no swap)
    shm_size: str = "28g"
    gpu: bool = True  # False: no GPU is requested or sampled
    cpus: float = 0.0  # CPU quota in cores (0: none)
    timeout_s: float = 3600.0


@dataclass(frozen=True)
class Efficiency:
    interval_s: float = 0.1
    gpu_peak: str = "stable_max"  # GPU_Mem: "stable_max" (FLARE22) or "raw_max" (FLARE23)
    stable_max_fraction: float = 0.02
    gpu_tolerance_mib: float = 2048.0  # AUC_GPU_Time_tol2G counts only the memory above this
    cpu_denominator_bias: float = 0.1


@dataclass(frozen=True)
class RankedMetric:
    """One ranked figure: ``column`` of the team's ``table`` (metrics.csv or efficiency.csv) per case."""

    name: str
    table: str
    column: str
    weight: float
    higher_is_better: bool
    decimals: int
    penalty: float  # the value of a failed case
    gpu: bool = False  # an empty value (a host with no GPU) counts as 0 for a case that ran ok


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    description: str
    labels: tuple[Organ, ...]
    scoring: Scoring
    container: Container
    efficiency: Efficiency
    metrics: tuple[RankedMetric, ...]
    normaliser: float
    source: str = ""  # the file it came from (a shipped name's file, or the given path)
    sha256: str = ""  # of the file's bytes
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def max_label(self) -> int:
        return max(o.id for o in self.labels)

    @property
    def mean_labels(self) -> tuple[Organ, ...]:
        """The labels that count in the per-case means (DSC_mean, NSD_mean)."""
        return tuple(o for o in self.labels if o.in_mean)

    def metric_columns(self) -> list[str]:
        """Per-label columns in the label table's order: every ``<short>_DSC``, then every ``<short>_NSD``."""
        return [f"{o.short}_DSC" for o in self.labels] + [f"{o.short}_NSD" for o in self.labels]

    def efficiency_penalties(self) -> dict[str, float]:
        """The ranked efficiency.csv figures a timed-out case gets (their penalties)."""
        return {m.column: m.penalty for m in self.metrics if m.table == "efficiency"}

    def identity(self) -> dict[str, str]:
        """What run.json, summary.json and the report record: the name and the file's hash."""
        return {"name": self.name, "sha256": self.sha256}


def shipped() -> list[str]:
    """The names of the profiles that ship with the harness."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))


def load(spec: str | Path | None = None) -> Profile:
    """The profile named ``spec`` (a shipped name) or stored at ``spec`` (a ``.toml`` path); None: flare22."""
    spec = DEFAULT if spec is None else str(spec)
    if spec in shipped():
        return _load_file(str(SHIPPED_DIR / f"{spec}.toml"))
    path = Path(spec)
    if path.suffix != ".toml":
        raise ProfileError(f"--profile {spec}: neither a shipped profile ({', '.join(shipped())}) nor a .toml file")
    return _load_file(str(path.resolve()))


def default() -> Profile:
    return load(DEFAULT)


@cache
def _load_file(path: str) -> Profile:
    file = Path(path)
    try:
        data = read_bounded(file, MAX_PROFILE_BYTES, "--profile")
    except ValueError as err:
        raise ProfileError(str(err)) from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ProfileError(f"--profile {file}: not valid TOML ({err})") from None
    try:
        profile = _build(raw)
    except (KeyError, TypeError, ValueError) as err:
        reason = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise ProfileError(f"--profile {file}: {reason}") from None
    return Profile(**{**profile, "source": file.name, "sha256": hashlib.sha256(data).hexdigest()})


def _build(raw: dict[str, Any]) -> dict[str, Any]:
    _keys(raw, "", {"name", "title", "description", "labels", "scoring", "container", "efficiency", "ranking"})
    name = _text(raw, "name")
    if not _NAME.fullmatch(name):
        raise ValueError(f"name {name!r}: letters, digits, '_' and '-', starting with a letter")
    labels = tuple(_label(entry, n) for n, entry in enumerate(_list(raw, "labels")))
    _unique([o.id for o in labels], "labels: id")
    _unique([o.short for o in labels], "labels: short")
    if not any(o.in_mean for o in labels):
        raise ValueError("labels: no label counts in the mean (in_mean)")
    ranking = _table(raw, "ranking")
    _keys(ranking, "ranking.", {"normaliser", "metrics"})
    metrics = tuple(_metric(entry, n, labels) for n, entry in enumerate(_list(ranking, "metrics")))
    _unique([m.name for m in metrics], "ranking.metrics: name")
    return {"name": name, "title": _text(raw, "title", name), "description": _text(raw, "description", ""),
            "labels": labels, "scoring": _scoring(_table(raw, "scoring")),
            "container": _container(_table(raw, "container")), "efficiency": _efficiency(_table(raw, "efficiency")),
            "metrics": metrics, "normaliser": _number(ranking, "normaliser", "ranking.", low=0, strict=True)}


def _label(entry: Any, n: int) -> Organ:
    where = f"labels[{n}]."
    if not isinstance(entry, dict):
        raise ValueError(f"labels[{n}]: a table {{ id = ..., short = ..., ... }}")
    _keys(entry, where, {"id", "short", "name", "tolerance_mm", "tube_crop", "in_mean"})
    label_id = entry["id"]
    if not isinstance(label_id, int) or isinstance(label_id, bool) or not 1 <= label_id <= MAX_LABEL_ID:
        raise ValueError(f"{where}id: an integer 1..{MAX_LABEL_ID}, got {label_id!r}")
    short = _text(entry, "short", where=where)
    if not _NAME.fullmatch(short):
        raise ValueError(f"{where}short {short!r}: letters, digits, '_' and '-', starting with a letter")
    return Organ(label_id, short, _text(entry, "name", short, where), _number(entry, "tolerance_mm", where, low=0),
                 tubular=_flag(entry, "tube_crop", False, where), in_mean=_flag(entry, "in_mean", True, where))


def _scoring(raw: dict[str, Any]) -> Scoring:
    _keys(raw, "scoring.", {"both_empty", "nsd_zero_below_dsc", "decimals", "missing_prediction"})
    missing = _text(raw, "missing_prediction", "empty", "scoring.")
    if missing not in MISSING:
        raise ValueError(f"scoring.missing_prediction: one of {', '.join(MISSING)}, got {missing!r}")
    decimals = raw.get("decimals", -1)
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not -1 <= decimals <= 12:
        raise ValueError(f"scoring.decimals: an integer -1..12, got {decimals!r}")
    return Scoring(both_empty=_number(raw, "both_empty", "scoring.", 1.0, low=0, high=1),
                   nsd_zero_below_dsc=_number(raw, "nsd_zero_below_dsc", "scoring.", 0.0, low=0, high=1),
                   decimals=decimals, missing_prediction=missing)


def _container(raw: dict[str, Any]) -> Container:
    _keys(raw, "container.", {"command", "memory", "shm_size", "gpu", "cpus", "timeout_s"})
    command = raw.get("command", list(Container.command))
    if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
        raise ValueError("container.command: a list of strings")
    sizes = {key: _text(raw, key, getattr(Container, key), "container.").lower() for key in ("memory", "shm_size")}
    for key, value in sizes.items():
        if not _SIZE.fullmatch(value):
            raise ValueError(f"container.{key}: a size like 28g or 512m, got {value!r}")
    return Container(command=tuple(command), memory=sizes["memory"], shm_size=sizes["shm_size"],
                     gpu=_flag(raw, "gpu", True, "container."), cpus=_number(raw, "cpus", "container.", 0.0, low=0),
                     timeout_s=_number(raw, "timeout_s", "container.", 3600.0, low=0, strict=True))


def _efficiency(raw: dict[str, Any]) -> Efficiency:
    _keys(raw, "efficiency.", {"interval_s", "gpu_peak", "stable_max_fraction", "gpu_tolerance_mib",
                               "cpu_denominator_bias"})
    peak = _text(raw, "gpu_peak", "stable_max", "efficiency.")
    if peak not in GPU_PEAKS:
        raise ValueError(f"efficiency.gpu_peak: one of {', '.join(GPU_PEAKS)}, got {peak!r}")
    return Efficiency(interval_s=_number(raw, "interval_s", "efficiency.", 0.1, low=0, strict=True), gpu_peak=peak,
                      stable_max_fraction=_number(raw, "stable_max_fraction", "efficiency.", 0.02, low=0, high=1),
                      gpu_tolerance_mib=_number(raw, "gpu_tolerance_mib", "efficiency.", 2048.0, low=0),
                      cpu_denominator_bias=_number(raw, "cpu_denominator_bias", "efficiency.", 0.1, low=0))


def _metric(entry: Any, n: int, labels: tuple[Organ, ...]) -> RankedMetric:
    where = f"ranking.metrics[{n}]."
    if not isinstance(entry, dict):
        raise ValueError(f"ranking.metrics[{n}]: a table {{ name = ..., table = ..., ... }}")
    _keys(entry, where, {"name", "table", "column", "weight", "higher_is_better", "decimals", "penalty", "gpu"})
    name, table = _text(entry, "name", where=where), _text(entry, "table", where=where)
    if table not in TABLES:
        raise ValueError(f"{where}table: one of {', '.join(TABLES)}, got {table!r}")
    column = _text(entry, "column", name, where)
    label_columns = {f"{o.short}_{kind}" for o in labels for kind in ("DSC", "NSD")}
    if table == "metrics" and column not in label_columns | {"DSC_mean", "NSD_mean"}:
        raise ValueError(f"{where}column {column!r}: not a metrics.csv column of these labels")
    decimals = entry.get("decimals", 4)
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 12:
        raise ValueError(f"{where}decimals: an integer 0..12, got {decimals!r}")
    return RankedMetric(name=name, table=table, column=column, weight=_number(entry, "weight", where, low=0),
                        higher_is_better=_flag(entry, "higher_is_better", None, where), decimals=decimals,
                        penalty=_number(entry, "penalty", where), gpu=_flag(entry, "gpu", False, where))


# --- typed reads, each error one line naming the key ---------------------------------------------------------------

def _keys(raw: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"unknown key {where}{unknown[0]} (known: {', '.join(sorted(allowed))})")


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{key}]: a table")
    return value


def _list(raw: dict[str, Any], key: str) -> list:
    value = raw[key]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key}: a non-empty list")
    return value


def _typed(raw: dict[str, Any], key: str, default: Any, where: str, kind: type, what: str) -> Any:
    """``raw[key]`` (or ``default``), which must be a ``kind``: KeyError when absent without a default."""
    value = raw.get(key, default)
    if value is None:
        raise KeyError(f"{where}{key}")
    if not isinstance(value, kind):
        raise ValueError(f"{where}{key}: {what}, got {value!r}")
    return value


def _text(raw: dict[str, Any], key: str, default: str | None = None, where: str = "") -> str:
    return _typed(raw, key, default, where, str, "a string")


def _flag(raw: dict[str, Any], key: str, default: bool | None, where: str) -> bool:
    return _typed(raw, key, default, where, bool, "true or false")


def _number(raw: dict[str, Any], key: str, where: str = "", default: float | None = None, *,
            low: float | None = None, high: float | None = None, strict: bool = False) -> float:
    value = raw.get(key, default)
    if value is None:
        raise KeyError(f"{where}{key}")
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value or abs(value) == float("inf"):
        raise ValueError(f"{where}{key}: a finite number, got {value!r}")
    if (low is not None and (value <= low if strict else value < low)) or (high is not None and value > high):
        bound = f"{'>' if strict else '>='} {low:g}" if low is not None else ""
        bound += f"{' and ' if bound and high is not None else ''}{'' if high is None else f'<= {high:g}'}"
        raise ValueError(f"{where}{key}: must be {bound}, got {value!r}")
    return float(value)


def _unique(values: list, what: str) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} appears twice")
        seen.add(value)


# --- a results folder's profile --------------------------------------------------------------------------------

def recorded(record: dict | None) -> dict[str, str]:
    """The profile identity a run record or summary holds; records written before profiles were flare22's."""
    value = (record or {}).get("profile")
    if isinstance(value, dict) and isinstance(value.get("name"), str) and isinstance(value.get("sha256"), str):
        return {"name": value["name"], "sha256": value["sha256"]}
    return default().identity()


def check_same(profile: Profile, record: dict | None, what: str) -> None:
    """ProfileError (one line) unless ``record`` (a run.json or summary.json) was made under ``profile``."""
    theirs = recorded(record)
    if theirs != profile.identity():
        changed = " (same name, other content)" if theirs["name"] == profile.name else ""
        raise ProfileError(f"{what} was run with profile {theirs['name']}{changed}, not {profile.name}: "
                           f"score it with --profile {theirs['name']}, or rerun it")
