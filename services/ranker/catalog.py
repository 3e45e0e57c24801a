"""The model catalog: one JSON file per model, validated at start-up by a pydantic schema (no gRPC here).

A bad file stops the service with a message naming the file and the field (``x.json: field
'signals[0].as_of' …``). Every signal carries its source, the date it was read, whether Versus measured
it or someone claims it, and (outside quality) the scale that maps it to 0..100 (see scoring.py).
The JSON Schema of a file is exported to ``docs/catalog.schema.json``
(``python -m services.ranker.catalog > docs/catalog.schema.json``; a test keeps it current).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ValidationError

from services.ranker.errors import CatalogError
from services.ranker.schema import (
    AGGREGATOR_DOMAINS,
    DIMENSIONS,
    ID_PATTERN,
    MAX_ID_CHARS,
    CatalogEntry,
    Claim,
    ClaimConditions,
    Signal,
    Task,
    TaskFile,
    denied_domain,
)

#: The file in the catalog directory that defines tasks (every other *.json is one model).
TASKS_FILE = "tasks.json"
__all__ = ["AGGREGATOR_DOMAINS", "DIMENSIONS", "ID_PATTERN", "MAX_ID_CHARS", "CatalogEntry", "Claim",
           "ClaimConditions", "Reference", "Signal", "Task", "TaskScale", "denied_domain", "load_catalog",
           "load_tasks", "parse_entry", "primary_signal"]


@dataclass(frozen=True)
class Reference:
    """A floor or ceiling: the reference model and its sourced primary metric."""

    model_id: str
    signal: Signal


@dataclass(frozen=True)
class TaskScale:
    """A task with its floor and ceiling resolved from the catalog (both None when its scale is absent)."""

    task: Task
    floor: Reference | None = None
    ceiling: Reference | None = None

    def place(self, value: float) -> float:
        """Where ``value`` falls between floor and ceiling, 0..100 (clamped)."""
        if self.floor is None or self.ceiling is None:
            raise ValueError(f"task {self.task.id!r} has no scale")
        lo, hi = self.floor.signal.value, self.ceiling.signal.value
        return 100.0 * min(1.0, max(0.0, (value - lo) / (hi - lo)))


def primary_signal(entry: CatalogEntry, metric: str, protocol: str | None = None) -> Signal | None:
    """The entry's quality signal for ``metric`` (of ``protocol`` when given)."""
    return next((s for s in entry.signals if s.dimension == "quality" and s.name == metric
                 and protocol in (None, s.protocol)), None)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(err: dict) -> str:
    kind = err["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a field of the catalog schema"
    msg = err["msg"].removeprefix("Value error, ")
    return msg[0].lower() + msg[1:]


def catalog_error(file: str, exc: ValidationError) -> CatalogError:
    """One message naming the file and every broken field (first problem first)."""
    problems = []
    for err in exc.errors():
        loc = _path(tuple(err["loc"]))
        problems.append(f"field '{loc}' {_problem(err)}" if loc else _problem(err))
    return CatalogError(f"{file}: " + "; ".join(problems))


def parse_entry(file: str, doc: object) -> CatalogEntry:
    """Validate one catalog document (parsed JSON); raises CatalogError naming ``file`` and the field."""
    try:
        return CatalogEntry.model_validate_json(json.dumps(doc), strict=True)
    except ValidationError as exc:
        raise catalog_error(file, exc) from None


def default_catalog_dir() -> Path:
    """The catalog shipped with the project."""
    return Path(str(resources.files("services.ranker").joinpath("catalog")))


def _validate(model: type[BaseModel], path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path.name}: cannot be read ({exc})") from exc
    try:
        return model.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise catalog_error(path.name, exc) from None


def _root(directory: str | Path) -> Path:
    root = Path(directory) if directory else default_catalog_dir()
    if not root.is_dir():
        raise CatalogError(f"catalog directory {root} does not exist")
    return root


def load_catalog(directory: str | Path = "") -> dict[str, CatalogEntry]:
    """Every model file (``*.json`` but ``tasks.json``) under ``directory`` (default: the shipped
    catalog), keyed by id."""
    root = _root(directory)
    entries: dict[str, CatalogEntry] = {}
    for path in sorted(root.glob("*.json")):
        if path.name == TASKS_FILE:
            continue
        entry = _validate(CatalogEntry, path)
        if entry.id in entries:
            raise CatalogError(f"{path.name}: field 'id' duplicates {entry.id!r} from another file")
        entries[entry.id] = entry
    if not entries:
        raise CatalogError(f"catalog directory {root} holds no *.json entries")
    return entries


def load_tasks(directory: str | Path, entries: dict[str, CatalogEntry]) -> dict[str, TaskScale]:
    """``tasks.json``: each task's primary metric with floor and ceiling read from its reference models."""
    path = _root(directory) / TASKS_FILE
    if not path.is_file():
        raise CatalogError(f"{TASKS_FILE}: missing from the catalog directory")
    scales: dict[str, TaskScale] = {}
    for i, task in enumerate(_validate(TaskFile, path).tasks):
        if task.floor_model is None:
            scales[task.id] = TaskScale(task)
            continue
        refs = []
        for role in ("floor_model", "ceiling_model"):
            model_id = getattr(task, role)
            where = f"{TASKS_FILE}: field 'tasks[{i}].{role}'"
            if model_id not in entries:
                raise CatalogError(f"{where} names {model_id!r}, which is not in the catalog")
            if entries[model_id].type != task.id:
                raise CatalogError(f"{where} names {model_id!r}, a model of task {entries[model_id].type!r}")
            signal = primary_signal(entries[model_id], task.primary_metric, task.protocol)
            if signal is None:
                raise CatalogError(f"{where} names {model_id!r}, which has no sourced {task.primary_metric} of "
                                   f"protocol {task.protocol!r}")
            refs.append(Reference(model_id, signal))
        if refs[1].signal.value <= refs[0].signal.value:
            raise CatalogError(f"{TASKS_FILE}: field 'tasks[{i}]' ceiling must be above floor")
        if refs[0].signal.source != refs[1].signal.source:
            raise CatalogError(f"{TASKS_FILE}: field 'tasks[{i}]' floor and ceiling come from different sources "
                               f"({refs[0].signal.source}, {refs[1].signal.source}); one protocol, one source")
        scales[task.id] = TaskScale(task, refs[0], refs[1])
    return scales


def json_schema() -> dict:
    """The JSON Schema of one catalog file (committed as docs/catalog.schema.json)."""
    schema = CatalogEntry.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Versus ranker catalog entry (one file per model; tasks.json follows TaskFile)"
    schema["$defs"]["TaskFile"] = TaskFile.model_json_schema()
    schema["$defs"].update(schema["$defs"]["TaskFile"].pop("$defs", {}))
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
