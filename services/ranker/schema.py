"""The catalog schema: one pydantic model per kind of fact (no I/O and no gRPC here; loading is catalog.py).

Every fact carries its provenance; a fact looked for and not found says so ("not found: …") and is never
derived from another one (pricing and open weights are not inferred from a licence nobody read).
"""

from __future__ import annotations

import math
from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

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


class ClaimConditions(_Schema):
    """The conditions a claim holds under, read from the claimant's own words: a measurement decides the
    claim only when it meets them ("10x batch size = ~9x throughput", said of a GPU, is not decided on a
    CPU)."""

    device_class: Literal["gpu", "cpu", ""] = Field("", description="'gpu', 'cpu', or '' (any device).")
    precision: Literal["fp32", "bf16", "fp16", "int8", ""] = Field("", description="'' = any precision.")
    resolution: int = Field(0, ge=0, description="Image side in pixels; 0 = any.")
    batch: int = Field(0, ge=0, description="Images per request; 0 = any.")
    weights_dependent: bool = Field(description="True for accuracy, agreement and prompt-adherence claims (only "
                                                "real or operator-attested weights decide them); false for speed, "
                                                "shape, limit and determinism claims (any weights of the "
                                                "architecture).")
    text: str = Field("", description="The conditions in the claimant's own words ('on GPU'); '' if none.")


class Claim(_Schema):
    """A claim as data, so it can be met with a source or a measurement. ``claimed_by`` says who makes
    it (the publisher's README, the seed page); ``source`` is its URL where one exists."""

    text: Text
    claimed_by: Text
    conditions: ClaimConditions
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
    protocol: str = Field("", description="Quality signals: who ran the benchmark and how (one id per protocol, "
                                          "e.g. 'timm-results-imagenet'); only values of the task's own protocol "
                                          "are placed on its scale.")
    scale: Scale | None = None

    @model_validator(mode="after")
    def _scaled(self) -> Signal:
        if self.dimension != "quality" and self.scale is None:
            raise ValueError("adoption and ecosystem signals need a scale")
        if self.dimension == "quality" and not self.protocol:
            raise ValueError("quality signals need their protocol")
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


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class PublishedFile(_Schema):
    """One weight file's sha256 as the checkpoint's own repository publishes it."""

    path: Text = Field(description="Path in the repository, '/'-separated ('model.safetensors').")
    sha256: Sha256
    size_bytes: int | None = Field(None, ge=0)


class Architecture(_Schema):
    """The checkpoint's architecture, each figure from a primary source (its config.json, or the code it was
    converted from): what the gateway's architecture and label checks expect of a served model."""

    layers: int = Field(0, ge=0, description="Transformer layers (ViT num_hidden_layers); 0 = not stated.")
    hidden_size: int = Field(0, ge=0, description="Width of hidden states and embeddings; 0 = not stated.")
    num_labels: int = Field(0, ge=0, description="Classes of the classification head; 0 = not stated.")
    labels_sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$",
                               description="sha256 of the label names sorted and joined by '\\n' (duplicates "
                                           "kept); '' = not stated.")
    source: Url = Field(description="Where layers, hidden_size and num_labels were read.")
    locator: Text
    as_of: date
    labels_source: str = Field("", description="Where the label names were read (required with labels_sha256).")
    labels_locator: str = ""
    note: str = ""

    @model_validator(mode="after")
    def _labels_sourced(self) -> Architecture:
        if bool(self.labels_sha256) != bool(self.labels_source.strip()):
            raise ValueError("labels_sha256 and labels_source come together")
        return self


class CatalogEntry(_Schema):
    """One catalog file."""

    id: ModelId
    display_name: Text
    hub_id: str = Field("", description="The checkpoint's hub id ('google/vit-base-patch16-224'); '' if none.")
    checkpoint: Text = Field(description="The exact weights the signals refer to.")
    type: Text = Field(description="The task id (tasks.json), e.g. image-classification, text-to-image.")
    family: Text
    parameters: int | None = Field(None, gt=0)
    parameters_source: str = Field("", description="Where the parameter count comes from (required with it).")
    published_files: tuple[PublishedFile, ...] = Field((), description="Per-file sha256 from the checkpoint's "
                                                                        "own repository; served weights are "
                                                                        "proven real only against these.")
    published_files_source: Text = Field(description="Where published_files were read (URL, place, date), or "
                                                     "'not found: …' with where they were looked for.")
    architecture: Architecture | None = None
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
        if self.parameters is not None and not self.parameters_source.strip():
            raise ValueError("parameters need their parameters_source")
        digests_missing = self.published_files_source.startswith("not found")
        if bool(self.published_files) == digests_missing:
            raise ValueError("published_files need the place they were read, and published_files_source says "
                             "'not found: …' exactly when there are none")
        if self.published_files and not self.hub_id:
            raise ValueError("published_files need the hub_id of the repository that publishes them")
        if self.license.id == "not-found":
            if self.license.open_weights is not None or self.license.commercial_use != "not-found":
                raise ValueError("a licence that was not found derives no open_weights or commercial_use "
                                 "(leave open_weights null and commercial_use 'not-found')")
            if self.pricing.kind != "not-found" and self.pricing.source is None:
                raise ValueError("pricing is not derived from a licence that was not found: give pricing its own "
                                 "source or say 'not-found'")
        return self

    def claims(self) -> list[tuple[str, Claim]]:
        """(capability id, claim) pairs."""
        return [(c.id, claim) for c in self.capabilities for claim in c.claims]


class Task(_Schema):
    """A task's primary quality metric and its reference floor and ceiling: two catalog models whose
    values come from one protocol (one source, one way of running the benchmark). Without such a pair the
    scale is absent (``scale_absent`` says why) and quality values are shown apart, unplaced."""

    id: Text
    primary_metric: Text
    unit: Text
    description: Text
    protocol: Text = Field(description="The protocol whose values are placed on this task's scale.")
    floor_model: ModelId | None = None
    ceiling_model: ModelId | None = None
    scale_absent: str = Field("", description="Why the task has no floor and ceiling (required without them).")
    note: str = ""

    @model_validator(mode="after")
    def _scale_or_reason(self) -> Task:
        if (self.floor_model is None) != (self.ceiling_model is None):
            raise ValueError("floor_model and ceiling_model come together")
        if self.floor_model is None and not self.scale_absent.strip():
            raise ValueError("a task without floor and ceiling says why in scale_absent")
        if self.floor_model is not None and self.scale_absent:
            raise ValueError("scale_absent is only for a task without floor and ceiling")
        return self


class TaskFile(_Schema):
    """``tasks.json`` in the catalog directory."""

    tasks: tuple[Task, ...] = Field(min_length=1)


