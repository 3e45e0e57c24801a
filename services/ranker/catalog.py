"""The model catalog: one JSON file per model, validated at start-up (no gRPC here).

A bad file stops the service with a message naming the file and the field. Every signal carries its
source, the date it was observed, whether Versus measured it or someone claims it, and the scale that
maps it to 0..100 (see scoring.py).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from services.ranker.errors import CatalogError

DIMENSIONS = ("adoption", "quality", "ecosystem")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Capability:
    id: str
    title: str
    description: str


@dataclass(frozen=True)
class Scale:
    """How a raw value maps to 0..100: ``linear`` between min and max, or ``log10`` of (1 + value)
    against log10(1 + max)."""

    kind: str
    min: float
    max: float

    def normalise(self, value: float) -> float:
        if self.kind == "log10":
            score = math.log10(1 + max(value, 0.0)) / math.log10(1 + self.max)
        else:
            score = (value - self.min) / (self.max - self.min)
        return 100.0 * min(1.0, max(0.0, score))

    def describe(self) -> str:
        return f"log10-scaled to {self.max:g}" if self.kind == "log10" else f"linear {self.min:g}..{self.max:g}"


@dataclass(frozen=True)
class Signal:
    dimension: str
    name: str
    value: float
    unit: str
    source: str
    as_of: str
    measured: bool
    scale: Scale
    note: str = ""


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    display_name: str
    type: str
    family: str
    parameters: int
    license: str
    pricing: str
    hub_id: str
    capabilities: tuple[Capability, ...]
    signals: tuple[Signal, ...]
    parameters_source: str = ""


class _Reader:
    """Typed field access that names the file and the field in every error."""

    def __init__(self, file: str, doc: Any, path: str = "") -> None:
        if not isinstance(doc, dict):
            raise CatalogError(f"{file}: {path or 'document'} must be an object")
        self.file, self.doc, self.path = file, doc, path

    def _where(self, key: str) -> str:
        return f"{self.file}: field '{self.path}{key}'"

    def get(self, key: str, kind: type | tuple[type, ...], required: bool = True, default: Any = None) -> Any:
        if key not in self.doc:
            if required:
                raise CatalogError(f"{self._where(key)} is required")
            return default
        value = self.doc[key]
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise CatalogError(f"{self._where(key)} must be {kind}, not a boolean")
        if not isinstance(value, kind):
            raise CatalogError(f"{self._where(key)} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
        if isinstance(value, str) and required and not value.strip():
            raise CatalogError(f"{self._where(key)} must not be empty")
        return value

    def child(self, key: str, index: int) -> _Reader:
        return _Reader(self.file, self.doc[key][index], f"{self.path}{key}[{index}].")

    def fail(self, key: str, problem: str) -> CatalogError:
        return CatalogError(f"{self._where(key)} {problem}")


def _scale(r: _Reader) -> Scale:
    raw = r.get("scale", dict)
    s = _Reader(r.file, raw, f"{r.path}scale.")
    kind = s.get("kind", str)
    if kind not in ("linear", "log10"):
        raise s.fail("kind", "must be 'linear' or 'log10'")
    lo, hi = float(s.get("min", (int, float), required=False, default=0)), float(s.get("max", (int, float)))
    if hi <= lo:
        raise s.fail("max", "must be greater than min")
    return Scale(kind, lo, hi)


def _signal(r: _Reader) -> Signal:
    dimension = r.get("dimension", str)
    if dimension not in DIMENSIONS:
        raise r.fail("dimension", f"must be one of {DIMENSIONS}")
    as_of = r.get("as_of", str)
    try:
        date.fromisoformat(as_of)
    except ValueError:
        raise r.fail("as_of", "must be an ISO date (YYYY-MM-DD)") from None
    source = r.get("source", str)
    return Signal(dimension, r.get("name", str), float(r.get("value", (int, float))), r.get("unit", str), source,
                  as_of, r.get("measured", bool), _scale(r), r.get("note", str, required=False, default=""))


def parse_entry(file: str, doc: Any) -> CatalogEntry:
    """Validate one catalog document; raises CatalogError naming ``file`` and the field."""
    r = _Reader(file, doc)
    model_id = r.get("id", str)
    if not _ID.match(model_id):
        raise r.fail("id", "must be lower-case letters, digits, '.', '_' or '-' (max 128)")
    caps = r.get("capabilities", list)
    if not caps:
        raise r.fail("capabilities", "must list at least one capability")
    capabilities = tuple(Capability(c.get("id", str), c.get("title", str), c.get("description", str))
                         for c in (r.child("capabilities", i) for i in range(len(caps))))
    if len({c.id for c in capabilities}) != len(capabilities):
        raise r.fail("capabilities", "has duplicate ids")
    signals = tuple(_signal(r.child("signals", i)) for i in range(len(r.get("signals", list))))
    parameters = r.get("parameters", int)
    if parameters <= 0:
        raise r.fail("parameters", "must be positive")
    return CatalogEntry(model_id, r.get("display_name", str), r.get("type", str), r.get("family", str), parameters,
                        r.get("license", str), r.get("pricing", str), r.get("hub_id", str, required=False, default=""),
                        capabilities, signals, r.get("parameters_source", str, required=False, default=""))


def default_catalog_dir() -> Path:
    """The catalog shipped with the project."""
    return Path(str(resources.files("services.ranker").joinpath("catalog")))


def load_catalog(directory: str | Path = "") -> dict[str, CatalogEntry]:
    """Every ``*.json`` under ``directory`` (default: the shipped catalog), keyed by id."""
    root = Path(directory) if directory else default_catalog_dir()
    if not root.is_dir():
        raise CatalogError(f"catalog directory {root} does not exist")
    entries: dict[str, CatalogEntry] = {}
    for path in sorted(root.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError(f"{path.name}: not valid JSON ({exc})") from exc
        entry = parse_entry(path.name, doc)
        if entry.id in entries:
            raise CatalogError(f"{path.name}: field 'id' duplicates {entry.id!r} from another file")
        entries[entry.id] = entry
    if not entries:
        raise CatalogError(f"catalog directory {root} holds no *.json entries")
    return entries
