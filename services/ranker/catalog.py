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
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from services.ranker.errors import CatalogError

DIMENSIONS = ("adoption", "quality", "ecosystem")
#: The file in the catalog directory that defines tasks (every other *.json is one model).
TASKS_FILE = "tasks.json"
#: Longest model id (catalog ids and ids in requests alike).
MAX_ID_CHARS = 128
#: A model id: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit.
ID_PATTERN = rf"^[a-z0-9][a-z0-9._-]{{0,{MAX_ID_CHARS - 1}}}$"

Text = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
ModelId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Dimension = Literal["adoption", "quality", "ecosystem"]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Domains that re-publish other sites' facts (model directories, SEO comparison pages, paper
#: mirrors). A catalog source on one of them is refused at load: cite the primary source instead.
AGGREGATOR_DOMAINS = (
    "promptlayer.com", "unfragile.ai", "madebyagents.com", "lumenfall.ai", "arxivlens.com", "researchtrend.ai",
    "emergentmind.com", "paperswithcode.com", "deepwiki.com", "bytegoose.com", "zimage.run", "skillagent.dev",
    "chatpaper.com", "wizwand.com", "tomesphere.com", "bohrium.dp.tech", "paperium.net", "deeplearn.org",
    "hugflare.com", "aifasthub.com", "ownyourai.com", "pith.science", "artificialanalysis.ai", "replicate.com",
    "civitai.com", "openrouter.ai", "fal.ai", "together.ai",
)
Url = Annotated[str, StringConstraints(pattern=r"^https://[^\s/]+\.[^\s]+$")]


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0].lower()


def denied_domain(url: str) -> str | None:
    """The aggregator domain ``url`` belongs to, if any."""
    host = _host(url)
    return next((d for d in AGGREGATOR_DOMAINS if host == d or host.endswith("." + d)), None)


class _Sourced(_Schema):
    """Anything with provenance: a primary-source URL, where in it, and the date it was read."""

    source: Url = Field(description="URL of the primary source (paper, official repo file, model card, "
                                    "benchmark's own leaderboard); never an aggregator.")
    locator: Text = Field(description="Where in the source: table, file and row, section.")
    as_of: date = Field(description="The date the source was read (ISO 8601).")
    note: str = ""

    @field_validator("source")
    @classmethod
    def _primary(cls, value: str) -> str:
        if (domain := denied_domain(value)) is not None:
            raise ValueError(f"is on the aggregator deny-list ({domain}); cite the primary source")
        return value


class Comparison(_Schema):
    """What a claim compares the model with: ``ResNet-50`` at 76.1."""

    subject: Text
    value: float


class Claim(_Schema):
    """A claim as data, so it can be met with a source or a measurement. ``claimed_by`` says who makes
    it (the publisher's README, the seed page); ``source`` is its URL where one exists."""

    text: Text
    claimed_by: Text
    metric: str = ""
    value: float | None = None
    unit: str = ""
    compared_with: tuple[Comparison, ...] = ()
    source: Url | None = None
    locator: str = ""
    as_of: date | None = None

    @field_validator("source")
    @classmethod
    def _primary(cls, value: str | None) -> str | None:
        if value is not None and (domain := denied_domain(value)) is not None:
            raise ValueError(f"is on the aggregator deny-list ({domain}); cite the primary source")
        return value


class Capability(_Schema):
    """One thing the model can do, as its publisher (or the seed page) describes it."""

    id: Text
    title: Text
    description: Text
    claims: tuple[Claim, ...] = ()


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


class Signal(_Sourced):
    """A fact about the model with its provenance. Quality signals are placed by their task's floor and
    ceiling (tasks.json) and carry no scale; adoption and ecosystem signals need one."""

    dimension: Dimension
    name: Text
    value: float
    unit: Text
    measured: bool = Field(description="True only for numbers Versus measured itself.")
    conditions: str = Field("", description="How the number was obtained (resolution, steps, checkpoint).")
    scale: Scale | None = None

    @model_validator(mode="after")
    def _scaled(self) -> Signal:
        if self.dimension != "quality" and self.scale is None:
            raise ValueError("adoption and ecosystem signals need a scale")
        return self


class Absent(_Schema):
    """A signal looked for and not found in a primary source: shown as "not found", never guessed."""

    dimension: Dimension
    name: Text
    note: Text = Field(description="Where it was looked for.")


CommercialUse = Literal["unrestricted", "revenue-threshold", "non-commercial", "paid-api", "not-found"]
#: Ecosystem credit for how freely the weights may be used (documented in docs/RANKING.md).
LICENSE_FREEDOM = {"unrestricted": 1.0, "revenue-threshold": 0.5, "non-commercial": 0.25, "paid-api": 0.0}


class License(_Schema):
    """The licence as a fact: open weights or not, commercial terms, revenue threshold."""

    id: Text = Field(description="SPDX id or the publisher's licence name; 'not-found' when unsourced.")
    open_weights: bool | None = None
    commercial_use: CommercialUse
    revenue_threshold_usd: int | None = None
    source: Url | None = None
    as_of: date | None = None
    note: str = ""

    @model_validator(mode="after")
    def _sourced(self) -> License:
        if self.id != "not-found" and (self.source is None or self.as_of is None):
            raise ValueError("a licence needs its source and as_of (or id 'not-found')")
        return self

    def summary(self) -> str:
        if self.id == "not-found":
            return "not found"
        terms = {"unrestricted": "commercial use allowed", "non-commercial": "non-commercial use only",
                 "paid-api": "paid API terms", "not-found": "terms not found",
                 "revenue-threshold": f"free below US ${self.revenue_threshold_usd:,} annual revenue"
                 if self.revenue_threshold_usd else "free below a revenue threshold"}[self.commercial_use]
        weights = {True: "open weights", False: "closed weights", None: "weights availability not found"}
        return f"{self.id}: {weights[self.open_weights]}, {terms}"


class Pricing(_Schema):
    """How it is paid for: free self-hosted weights, or a paid API with its published price and date."""

    kind: Literal["free-self-hosted", "paid-api", "not-found"]
    price_usd: float | None = None
    per: str = ""
    source: Url | None = None
    as_of: date | None = None
    note: str = ""

    def summary(self) -> str:
        if self.kind == "paid-api" and self.price_usd is not None:
            return f"paid API: US ${self.price_usd:g} per {self.per} (as of {self.as_of})"
        return {"free-self-hosted": "free: self-hosted open weights (see licence)", "paid-api": "paid API (price not "
                "found)", "not-found": "not found"}[self.kind]


class CatalogEntry(_Schema):
    """One catalog file."""

    id: ModelId
    display_name: Text
    hub_id: str = ""
    checkpoint: Text = Field(description="The exact weights the signals refer to.")
    type: Text = Field(description="The task id (tasks.json), e.g. image-classification, text-to-image.")
    family: Text
    parameters: int | None = Field(None, gt=0)
    parameters_source: str = ""
    license: License
    pricing: Pricing
    capabilities: tuple[Capability, ...] = Field(min_length=1)
    signals: tuple[Signal, ...]
    not_found: tuple[Absent, ...] = ()

    @field_validator("capabilities")
    @classmethod
    def _unique_capabilities(cls, value: tuple[Capability, ...]) -> tuple[Capability, ...]:
        ids = [c.id for c in value]
        if len(set(ids)) != len(ids):
            raise ValueError("has duplicate ids")
        return value

    @model_validator(mode="after")
    def _found_or_not(self) -> CatalogEntry:
        both = {(s.dimension, s.name) for s in self.signals} & {(a.dimension, a.name) for a in self.not_found}
        if both:
            raise ValueError(f"not_found lists signals that are present: {sorted(both)}")
        return self

    def claims(self) -> list[tuple[str, Claim]]:
        """(capability id, claim) pairs."""
        return [(c.id, claim) for c in self.capabilities for claim in c.claims]


class Task(_Schema):
    """A task's primary quality metric and its reference floor and ceiling (two catalog models)."""

    id: Text
    primary_metric: Text
    unit: Text
    description: Text
    floor_model: ModelId
    ceiling_model: ModelId
    note: str = ""


class TaskFile(_Schema):
    """``tasks.json`` in the catalog directory."""

    tasks: tuple[Task, ...] = Field(min_length=1)


@dataclass(frozen=True)
class Reference:
    """A floor or ceiling: the reference model and its sourced primary metric."""

    model_id: str
    signal: Signal


@dataclass(frozen=True)
class TaskScale:
    """A task with its floor and ceiling resolved from the catalog."""

    task: Task
    floor: Reference
    ceiling: Reference

    def place(self, value: float) -> float:
        """Where ``value`` falls between floor and ceiling, 0..100 (clamped)."""
        lo, hi = self.floor.signal.value, self.ceiling.signal.value
        return 100.0 * min(1.0, max(0.0, (value - lo) / (hi - lo)))


def primary_signal(entry: CatalogEntry, metric: str) -> Signal | None:
    return next((s for s in entry.signals if s.dimension == "quality" and s.name == metric), None)


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
        refs = []
        for role in ("floor_model", "ceiling_model"):
            model_id = getattr(task, role)
            where = f"{TASKS_FILE}: field 'tasks[{i}].{role}'"
            if model_id not in entries:
                raise CatalogError(f"{where} names {model_id!r}, which is not in the catalog")
            if entries[model_id].type != task.id:
                raise CatalogError(f"{where} names {model_id!r}, a model of task {entries[model_id].type!r}")
            signal = primary_signal(entries[model_id], task.primary_metric)
            if signal is None:
                raise CatalogError(f"{where} names {model_id!r}, which has no sourced {task.primary_metric}")
            refs.append(Reference(model_id, signal))
        if refs[1].signal.value <= refs[0].signal.value:
            raise CatalogError(f"{TASKS_FILE}: field 'tasks[{i}]' ceiling must be above floor")
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
