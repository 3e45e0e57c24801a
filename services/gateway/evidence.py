"""Every capability claim ends with one mark (DESIGN §6):

- VERIFIED_LIVE: a probe ran now against the serving model and saw what the claim says;
- SUPPORTED: a cited primary source agrees;
- CONTRADICTED: a source or a live measurement disagrees (both numbers shown);
- CLAIMED: nothing checks it;
- UNAVAILABLE: the probe could not run (the reason says why).

Rules, in order, for one claim of one model:
1. A numeric claim whose metric a live probe measures (``batch10_throughput_ratio``, ``int8_speedup``,
   ``default_steps``) is verified when the measurement reaches the claimed value (within the relative
   tolerance), else contradicted with both numbers.
2. A numeric claim whose metric the catalog sources state (``imagenet1k_top1``) is contradicted when any
   primary source differs by more than ``claim_tolerance_pt``, else supported.
3. A capability with live probes, on a served model: verified when every probe passed, contradicted
   when one ran and failed, unavailable when one could not run. Quality probes on weights that are not
   real decide nothing: the mark comes from the sources and the measurement is attached as a mechanism
   check.
4. Otherwise supported when the claim cites a source, else claimed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.gateway.probes import ProbeResult

Mark = int
VERIFIED = gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE
SUPPORTED = gateway_pb2.EVIDENCE_MARK_SUPPORTED
CONTRADICTED = gateway_pb2.EVIDENCE_MARK_CONTRADICTED
CLAIMED = gateway_pb2.EVIDENCE_MARK_CLAIMED
UNAVAILABLE = gateway_pb2.EVIDENCE_MARK_UNAVAILABLE

#: Capability id → the probes that check it (probe names without the "sd35.<variant>." prefix).
LIVE_CHECKS: dict[str, tuple[str, ...]] = {
    "imagenet-1k-classification": ("vit.distribution",),
    "embedding-extraction": ("vit.embedding",),
    "batch-inference": ("vit.batching",),
    "fine-tuning": ("vit.transfer",),
    "multi-framework-safetensors": ("info",),
    "quantization-onnx-export": ("vit.precision",),
    "text-to-image": ("generate",),
    "seeded-determinism": ("generate",),
    "four-step-generation": ("generate",),
    "megapixel-output": ("resolution",),
    "multi-resolution": ("resolution",),
    "lora-fine-tuning": ("lora",),
    "classifier-free-guidance": ("guidance",),
    "diffusers-integration": ("info",),
    "three-text-encoders": ("info",),
    "skip-layer-guidance": ("info",),
    "open-self-hosted-inference": ("info",),
    "prompt-adherence": ("quality",),
}
#: What each probe itself verifies: the claim a live row states (never the catalog's wording, which a
#: structural probe may not check — "high-quality images in 4 steps" is not what a size probe sees).
PROBE_CLAIMS = {
    "vit.distribution": "returns a probability distribution over all its labels whose top-1 is the logits' argmax",
    "vit.embedding": "embeddings of the advertised width from every layer, identical on repeat",
    "vit.batching": "serves batched requests (throughput at 10 images per request measured against 1)",
    "vit.transfer": "a linear head trained on its embeddings classifies new examples (transfer learning)",
    "vit.precision": "runs at reduced precision (speed and agreement measured against fp32)",
    "info": "served here as described (backend, weights format and provenance reported by GetModelInfo)",
    "generate": "an image of the requested size, byte-identical for the same request and seed",
    "resolution": "the advertised pixel limits hold at their edges",
    "lora": "a LoRA adapter changes the output; without it the base output returns",
    "guidance": "guidance scale and negative prompts change the output",
    "quality": "prompt adherence: the ViT judge finds the prompted ImageNet class in the images",
}

#: Claim metrics a live probe measures: metric → (measurement name, direction). "min": the measured value
#: must reach the claim; "eq": equal it.
LIVE_METRICS = {
    "batch10_throughput_ratio": ("batch10_throughput_ratio", "min"),
    "int8_speedup": ("int8_speedup", "min"),
    "default_steps": ("default_steps", "eq"),
}
#: Relative tolerance for live numeric claims ("~9x" is met by 8.1x).
LIVE_TOLERANCE = 0.10


@dataclass
class ModelEvidence:
    """What is known about one compared model when marks are decided."""

    entry: ranker_pb2.CatalogEntry
    served: bool
    probes: dict[str, ProbeResult] = field(default_factory=dict)  # by short name ("generate", "vit.embedding")
    measurements: list[gateway_pb2.Measurement] = field(default_factory=list)
    live_requested: bool = True
    catalog: dict[str, ranker_pb2.CatalogEntry] = field(default_factory=dict)  # every entry fetched, for compared_with


def _sources_for(metric: str, entry: ranker_pb2.CatalogEntry, skip_text: str = "") -> list[gateway_pb2.Source]:
    """Primary-source values of ``metric`` for this model: its signals and its other sourced claims."""
    out = [gateway_pb2.Source(url=s.source, locator=s.locator, as_of=s.as_of, value=s.value, unit=s.unit,
                              label=f"catalog signal {s.name}" + (f" ({s.conditions})" if s.conditions else ""))
           for s in entry.signals if s.name == metric and s.source]
    out += [gateway_pb2.Source(url=c.source, locator=c.locator, as_of=c.as_of, value=c.value, unit=c.unit,
                               label=c.claimed_by)
            for c in entry.claims if c.metric == metric and c.source and c.HasField("value") and c.text != skip_text]
    return out


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _sourced_numeric(claim: ranker_pb2.Claim, ev: ModelEvidence, tol: float) -> gateway_pb2.CapabilityEvidence:
    row = _row(ev, claim.capability_id, claim.text, claimed_value=claim.value, unit=claim.unit)
    sources = _sources_for(claim.metric, ev.entry, skip_text=claim.text)
    disagreements = [s for s in sources if abs(s.value - claim.value) > tol]
    lines = [f"claimed {_fmt(claim.value)} {claim.unit} by {claim.claimed_by or 'the catalog'}"]
    lines += [f"{s.label}: {_fmt(s.value)} {s.unit} ({s.url}, {s.locator}, read {s.as_of})" for s in sources]
    for other in claim.compared_with:  # "84.0% vs 76.1% and 77.1%": the compared numbers meet their sources too
        target = _find_subject(other.subject, ev.catalog)
        if target is None:
            lines.append(f"compared with {other.subject} {_fmt(other.value)}: no catalog entry to check it")
            continue
        theirs = _sources_for(claim.metric, target)
        for s in theirs:
            sources.append(gateway_pb2.Source(url=s.url, locator=s.locator, as_of=s.as_of, value=s.value,
                                              unit=s.unit, label=f"{target.display_name}: {s.label}"))
            if abs(s.value - other.value) > tol:
                disagreements.append(s)
            lines.append(f"{target.display_name} claimed {_fmt(other.value)}, source {_fmt(s.value)}")
    row.sources.extend(sources)
    if not sources:
        row.mark, row.detail = CLAIMED, "; ".join(lines) + "; no primary source states this metric"
    elif disagreements:
        row.mark = CONTRADICTED
        row.detail = "; ".join(lines) + f" — differs by more than {tol:g} {claim.unit}"
    else:
        row.mark, row.detail = SUPPORTED, "; ".join(lines) + f" — within {tol:g} {claim.unit}"
    return row


def _find_subject(subject: str, catalog: dict[str, ranker_pb2.CatalogEntry]) -> ranker_pb2.CatalogEntry | None:
    wanted = subject.lower().replace(" ", "").replace("-", "")
    for entry in catalog.values():
        names = {entry.id, entry.display_name}
        if any(n.lower().replace(" ", "").replace("-", "").startswith(wanted) for n in names):
            return entry
    return None


def _row(ev: ModelEvidence, capability_id: str, claim: str, **kw: object) -> gateway_pb2.CapabilityEvidence:
    title = next((c.title for c in ev.entry.capabilities if c.id == capability_id), capability_id)
    return gateway_pb2.CapabilityEvidence(model_id=ev.entry.id, capability_id=capability_id, title=title,
                                          claim=claim, **kw)


def _probes_of(capability_id: str, ev: ModelEvidence) -> list[ProbeResult]:
    wanted = LIVE_CHECKS.get(capability_id, ())
    return [p for name, p in ev.probes.items() if any(name == w or name.startswith(w + ".") for w in wanted)]


def _live_numeric(claim: ranker_pb2.Claim, ev: ModelEvidence) -> gateway_pb2.CapabilityEvidence | None:
    measured_name, direction = LIVE_METRICS[claim.metric]
    found = [m for m in ev.measurements if m.name == measured_name]
    if not found:
        return None
    m = found[-1]
    row = _row(ev, claim.capability_id, claim.text, claimed_value=claim.value, unit=claim.unit)
    row.measurements.append(m)
    row.probes.append(m.probe)
    met = (m.value >= claim.value * (1 - LIVE_TOLERANCE)) if direction == "min" else abs(m.value - claim.value) < 1e-9
    row.mark = VERIFIED if met else CONTRADICTED
    row.detail = (f"claimed {_fmt(claim.value)} {claim.unit} ({claim.claimed_by or 'catalog'}); measured "
                  f"{_fmt(m.value)} {m.unit} by {m.probe} on this deployment ({m.weights.device}, "
                  f"{m.weights.precision}): {m.detail}")
    return row


def _live_capability(capability_id: str, claim: str, ev: ModelEvidence) -> gateway_pb2.CapabilityEvidence | None:
    """Rule 3, or None when the capability has no live check for this model."""
    if capability_id not in LIVE_CHECKS or not ev.served:
        return None
    probes = _probes_of(capability_id, ev)
    row = _row(ev, capability_id, claim)
    if not probes:
        if not ev.live_requested:
            return None  # not probed now and nothing cached: the sources decide
        row.mark = UNAVAILABLE
        row.unavailable_reason = row.detail = "no probe result (not run within the budget)"
        return row
    row.claim = "; ".join(dict.fromkeys(PROBE_CLAIMS.get(w, w) for w in LIVE_CHECKS[capability_id]))
    row.probes.extend(p.probe for p in probes)
    missing = [p for p in probes if not p.ran]
    if missing:
        u = missing[0].unavailable
        row.mark = UNAVAILABLE
        row.unavailable_reason = f"{u.component}: {u.code} ({u.reason or 'no reason'}): {u.message}".strip()
        row.detail = row.unavailable_reason
        return row
    for p in probes:
        row.measurements.extend(p.measurements)
    if capability_id == "prompt-adherence" and any(p.weights.kind != "real" for p in probes):
        return None  # quality on non-real weights decides nothing (rule 3); measurements attach below
    failed = [p for p in probes if not p.ok]
    row.mark = CONTRADICTED if failed else VERIFIED
    row.detail = " | ".join(f"{p.probe} at {p.at} on {p.weights.service} ({p.weights.kind} weights): {p.detail}"
                            for p in probes)
    return row


def _from_sources(capability_id: str, claim: ranker_pb2.Claim | None, text: str, ev: ModelEvidence
                  ) -> gateway_pb2.CapabilityEvidence:
    """Rule 4 (plus the quality signals for prompt adherence)."""
    row = _row(ev, capability_id, text)
    if claim is not None and claim.source:
        row.mark = SUPPORTED
        row.sources.append(gateway_pb2.Source(url=claim.source, locator=claim.locator, as_of=claim.as_of,
                                              label=claim.claimed_by))
        row.detail = f"stated by {claim.claimed_by or 'the publisher'}: {claim.source} ({claim.locator})"
        return row
    quality = [s for s in ev.entry.signals if s.dimension == "quality" and s.source] \
        if capability_id == "prompt-adherence" else []
    terms = ev.entry.license_terms
    if "license" in capability_id and terms.source:
        row.mark = SUPPORTED
        row.sources.append(gateway_pb2.Source(url=terms.source, as_of=terms.as_of, label=f"licence {terms.id}"))
        row.detail = f"licence {terms.id} ({terms.commercial_use}): {terms.source}, read {terms.as_of}"
    elif quality:
        row.mark = SUPPORTED
        row.sources.extend(gateway_pb2.Source(url=s.source, locator=s.locator, as_of=s.as_of, value=s.value,
                                              unit=s.unit, label=f"catalog signal {s.name}") for s in quality)
        row.detail = "; ".join(f"{s.name} {_fmt(s.value)} ({s.source}, {s.locator})" for s in quality)
    else:
        row.mark = CLAIMED
        row.detail = ("not probed now (live probes off, nothing cached)" if ev.served and not ev.live_requested
                      and capability_id in LIVE_CHECKS else "no probe and no primary source checks it")
    if capability_id == "prompt-adherence":
        for p in _probes_of(capability_id, ev):
            row.measurements.extend(p.measurements)
            if p.weights.kind != "real":
                row.detail += (f"; measured prompt adherence on {p.weights.kind} weights is a mechanism check only: "
                               f"{p.detail}")
    return row


def capability_evidence(ev: ModelEvidence, tolerance_pt: float) -> list[gateway_pb2.CapabilityEvidence]:
    """One row per claim of every capability of the model (the description is the claim when there is
    none), each with its mark, plus one row per live-checked capability stating what its probes verified."""
    rows: list[gateway_pb2.CapabilityEvidence] = []
    claims_by_cap: dict[str, list[ranker_pb2.Claim]] = {}
    for claim in ev.entry.claims:
        claims_by_cap.setdefault(claim.capability_id, []).append(claim)
    for cap in ev.entry.capabilities:
        claims = claims_by_cap.get(cap.id, [])
        live = _live_capability(cap.id, cap.description, ev)
        if live is not None:  # what the probe verified, in its own words; the claims follow
            rows.append(live)
        elif not claims:
            rows.append(_from_sources(cap.id, None, cap.description, ev))
        for claim in claims:
            rows.append(_claim_row(claim, ev, tolerance_pt))
    return rows


def _claim_row(claim: ranker_pb2.Claim, ev: ModelEvidence, tolerance_pt: float) -> gateway_pb2.CapabilityEvidence:
    if claim.HasField("value") and claim.metric in LIVE_METRICS:
        row = _live_numeric(claim, ev)
        if row is not None:
            return row
        if ev.served and ev.live_requested:
            out = _row(ev, claim.capability_id, claim.text, claimed_value=claim.value, unit=claim.unit)
            out.mark = UNAVAILABLE
            blocked = [p.unavailable for p in _probes_of(claim.capability_id, ev) if p.unavailable is not None]
            out.unavailable_reason = out.detail = (
                f"{blocked[0].component}: {blocked[0].message}" if blocked
                else f"no live measurement of {claim.metric} on this deployment")
            return out
    if claim.HasField("value") and claim.metric:
        return _sourced_numeric(claim, ev, tolerance_pt)
    live = _live_capability(claim.capability_id, claim.text, ev)
    return live or _from_sources(claim.capability_id, claim, claim.text, ev)


def mark_counts(rows: Iterable[gateway_pb2.CapabilityEvidence]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        name = gateway_pb2.EvidenceMark.Name(row.mark).removeprefix("EVIDENCE_MARK_").lower()
        counts[name] = counts.get(name, 0) + 1
    return counts
