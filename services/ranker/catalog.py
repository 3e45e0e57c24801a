"""The model catalog: one JSON file per model, validated at start-up by a pydantic schema (no gRPC here).

A bad file stops the service with a message naming the file and the field (``x.json: field
'signals[0].as_of' …``). Every signal carries its source, the date it was read, whether Versus measured
it or someone claims it, and (outside quality) the scale that maps it to 0..100 (see scoring.py).
The JSON Schema of a file is exported to ``docs/catalog.schema.json``
(``python -m services.ranker.catalog > docs/catalog.schema.json``; a test keeps it current).
"""

from __future__ import annotations

import json
import math
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from services.ranker.errors import CatalogError

DIMENSIONS = ("adoption", "quality", "ecosystem")
#: Longest model id (catalog ids and ids in requests alike).
MAX_ID_CHARS = 128
#: A model id: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit.
ID_PATTERN = rf"^[a-z0-9][a-z0-9._-]{{0,{MAX_ID_CHARS - 1}}}$"

Text = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
ModelId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Dimension = Literal["adoption", "quality", "ecosystem"]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Capability(_Schema):
    """One thing the model can do, as its publisher (or the seed page) describes it."""

    id: Text
    title: Text
    description: Text


class Scale(_Schema):
    """How a raw value maps to 0..100: ``linear`` between min and max, or ``log10`` of (1 + value)
    against log10(1 + max)."""

    kind: Literal["linear", "log10"]
    min: float = 0.0
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Scale:
        if self.max <= self.min:
            raise ValueError("max must be greater than min")
        return self

    def normalise(self, value: float) -> float:
        if self.kind == "log10":
            score = math.log10(1 + max(value, 0.0)) / math.log10(1 + self.max)
        else:
            score = (value - self.min) / (self.max - self.min)
        return 100.0 * min(1.0, max(0.0, score))

    def describe(self) -> str:
        return f"log10-scaled to {self.max:g}" if self.kind == "log10" else f"linear {self.min:g}..{self.max:g}"


class Signal(_Schema):
    """A fact about the model with its provenance."""

    dimension: Dimension
    name: Text
    value: float
    unit: Text
    source: Text = Field(description="Where the value comes from: a URL of the primary source.")
    as_of: date = Field(description="The date the source was read (ISO 8601).")
    measured: bool = Field(description="True only for numbers Versus measured itself.")
    scale: Scale
    note: str = ""


class CatalogEntry(_Schema):
    """One catalog file."""

    id: ModelId
    display_name: Text
    hub_id: str = ""
    type: Text
    family: Text
    parameters: int = Field(gt=0)
    parameters_source: str = ""
    license: Text
    pricing: Text
    capabilities: tuple[Capability, ...] = Field(min_length=1)
    signals: tuple[Signal, ...]

    @field_validator("capabilities")
    @classmethod
    def _unique_capabilities(cls, value: tuple[Capability, ...]) -> tuple[Capability, ...]:
        ids = [c.id for c in value]
        if len(set(ids)) != len(ids):
            raise ValueError("has duplicate ids")
        return value


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


def load_catalog(directory: str | Path = "") -> dict[str, CatalogEntry]:
    """Every ``*.json`` under ``directory`` (default: the shipped catalog), keyed by id."""
    root = Path(directory) if directory else default_catalog_dir()
    if not root.is_dir():
        raise CatalogError(f"catalog directory {root} does not exist")
    entries: dict[str, CatalogEntry] = {}
    for path in sorted(root.glob("*.json")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{path.name}: cannot be read ({exc})") from exc
        try:
            entry = CatalogEntry.model_validate_json(text, strict=True)
        except ValidationError as exc:
            raise catalog_error(path.name, exc) from None
        if entry.id in entries:
            raise CatalogError(f"{path.name}: field 'id' duplicates {entry.id!r} from another file")
        entries[entry.id] = entry
    if not entries:
        raise CatalogError(f"catalog directory {root} holds no *.json entries")
    return entries


def json_schema() -> dict:
    """The JSON Schema of one catalog file (committed as docs/catalog.schema.json)."""
    schema = CatalogEntry.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Versus ranker catalog entry"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
