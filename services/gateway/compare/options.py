"""What one Compare asks for (:class:`Options`, validated before any work) and what the gateway's
configuration says about comparisons, parsed once per gateway into typed values (:class:`Settings`)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from versus.gateway.v1 import gateway_pb2

from services.common.errors import InvalidArgument, quote
from services.gateway.config import GatewayConfig, ServedBy

MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
CLASS_NAME = re.compile(r"[A-Za-z0-9 '.,()-]{1,64}")
MAX_MODELS, MAX_CLASSES, MAX_PER_CLASS, MAX_BUDGET_S = 4, 16, 8, 600.0


@dataclass(frozen=True)
class Settings:
    """The configuration's lists, parsed once when the gateway starts (never per comparison)."""

    config: GatewayConfig
    served: dict[str, ServedBy]  # catalog id → the ViT service, or an SD3.5 variant
    precision_targets: dict[str, str]  # precision → target of another ViT deployment
    attested: dict[str, str]  # catalog id → the sha256 the deployer pinned
    classes: tuple[str, ...]  # default ImageNet classes of the quality probe

    @classmethod
    def parse(cls, config: GatewayConfig) -> Settings:
        return cls(config, config.served_map(), config.precision_targets(), config.attested_digests(),
                   tuple(config.classes()))


@dataclass(frozen=True)
class Options:
    model_ids: tuple[str, ...]
    live: bool
    classes: tuple[str, ...]
    per_class: int
    budget_s: float
    record_matches: bool
    head_to_head: bool

    def comparison_id(self) -> str:
        raw = json.dumps([sorted(self.model_ids), self.live, self.classes, self.per_class, self.record_matches,
                          self.head_to_head])
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def validate(request: gateway_pb2.CompareRequest, settings: Settings) -> Options:
    """Every limit, before any work; all violations reported at once."""
    ids = list(request.model_ids)
    problems = _id_problems(ids)
    p = request.probes
    classes = list(p.imagenet_classes)
    if len(classes) > MAX_CLASSES:
        problems.append(("probes.imagenet_classes", f"at most {MAX_CLASSES} classes, got {len(classes)}"))
    for i, name in enumerate(classes[:MAX_CLASSES]):  # (at most MAX_CLASSES violations + the ids' 4 + 2)
        if not CLASS_NAME.fullmatch(name):
            problems.append((f"probes.imagenet_classes[{i}]", f"must be 1..64 plain characters, got {quote(name)}"))
    if not 0 <= p.images_per_class <= MAX_PER_CLASS:
        problems.append(("probes.images_per_class", f"must be 0..{MAX_PER_CLASS}, got {p.images_per_class}"))
    if not 0 <= p.budget_s <= MAX_BUDGET_S or p.budget_s != p.budget_s:
        problems.append(("probes.budget_s", f"must be 0..{MAX_BUDGET_S:g} seconds, got {p.budget_s}"))
    if problems:
        raise InvalidArgument(problems[0][0], problems[0][1], more=problems[1:])
    cfg = settings.config
    return Options(tuple(ids), p.live, tuple(classes) or settings.classes,
                   p.images_per_class or cfg.images_per_class, p.budget_s or cfg.compare_budget_s,
                   p.record_matches, p.head_to_head)


def _id_problems(ids: list[str]) -> list[tuple[str, str]]:
    """At most MAX_MODELS ids are looked at (a request with 20 million ids costs no more than one with 5)."""
    if not 2 <= len(ids) <= MAX_MODELS:
        return [("model_ids", f"compare 2..{MAX_MODELS} models, got {len(ids)}")]
    problems, seen = [], set()
    for i, model_id in enumerate(ids):
        if not MODEL_ID.fullmatch(model_id):
            problems.append((f"model_ids[{i}]", f"must be 1..128 characters of [a-z0-9._-], got {quote(model_id)}"))
        elif model_id in seen:
            problems.append((f"model_ids[{i}]", f"{quote(model_id)} is listed twice"))
        seen.add(model_id)
    return problems
