"""Every capability claim ends with one mark (DESIGN §6):

- VERIFIED_LIVE: a declared check (:mod:`services.gateway.compare.checks`) ran now against the serving model
  and its judgement of what it saw holds;
- SUPPORTED: a cited primary source agrees;
- CONTRADICTED: a source disagrees, a check's judgement fails, or the service answered out of contract
  (INTERNAL, UNKNOWN, a wrong count or shape, undecodable bytes, its own limits refused) — what was seen
  is shown;
- CLAIMED: nothing checks it — including what a service says of itself ("reported by the service");
- UNAVAILABLE: the check could not run (service unreachable, UNAVAILABLE, DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED, CANCELLED, its GetModelInfo failed, the budget ran out), with the reason.

Rules, in order, for one claim of one model:
1. A numeric claim whose metric a check measures (``batch10_throughput_ratio``, ``int8_speedup``,
   ``default_steps``) is decided by the measurement only when the claim's conditions (device class,
   precision, resolution, batch, and for weights-dependent claims real or operator-attested weights) are
   those the measurement held under — observed, or set by the gateway's configuration: a condition only the
   service reports (its device, its reported precision) never lets a measurement decide; otherwise the row
   keeps its source mark and says what was measured and why it cannot decide.
2. A numeric claim whose metric the catalog sources state (``imagenet1k_top1``) is contradicted when any
   primary source differs by more than ``claim_tolerance_pt``, else supported.
3. A capability with checks, on a served model, gets one live row: its checks' judgements combined
   (contradicted over unavailable over verified). A weights-dependent check on other weights, or a
   judgement that declines, decides nothing: the sources decide and the measurement is attached.
4. Otherwise supported when the claim cites a source, else claimed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.gateway.compare.check import Check
from services.gateway.compare.checks import BY_ID, FOR_CAPABILITY, OWN_ROWS, SELF_DESCRIBED
from services.gateway.compare.probes import DECIDING_KINDS, ProbeResult
from services.gateway.compare.verdicts import UNDECIDED, WEIGHTS_AWARE, Verdict

VERIFIED = gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE
SUPPORTED = gateway_pb2.EVIDENCE_MARK_SUPPORTED
CONTRADICTED = gateway_pb2.EVIDENCE_MARK_CONTRADICTED
CLAIMED = gateway_pb2.EVIDENCE_MARK_CLAIMED
UNAVAILABLE = gateway_pb2.EVIDENCE_MARK_UNAVAILABLE
#: Claim metric → the check whose measurement may decide it.
DECIDED_BY = {metric: check for check in BY_ID.values() for metric in check.decides}


@dataclass
class ModelEvidence:
    """What is known about one compared model when marks are decided."""

    entry: ranker_pb2.CatalogEntry
    served: bool
    results: list[tuple[Check, ProbeResult]] = field(default_factory=list)  # each observation beside its check
    measurements: list[gateway_pb2.Measurement] = field(default_factory=list)
    live_requested: bool = True
    catalog: dict[str, ranker_pb2.CatalogEntry] = field(default_factory=dict)  # every entry fetched, for compared_with
    described: str = ""  # what the deployment showed of itself ("a 2-layer random large pipeline")
    reported: str = ""  # GetModelInfo's own words
    info_error: gateway_pb2.Unavailable | None = None
    undecided: dict[str, str] = field(default_factory=dict)  # capability → why its live check decided nothing


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _reason(u: gateway_pb2.Unavailable) -> str:
    return f"{u.component}: {u.code or 'not run'} ({u.reason or 'no reason'}): {u.message}"


def device_class(device: str) -> str:
    return "gpu" if device.startswith("cuda") else device.split(":")[0] or "unknown"


def measured_conditions(r: ProbeResult) -> str:
    """The conditions of a measurement: the device as the service reports it (never observed here), the
    precision as configured for the deployment (or as reported), the size and batch the probe chose."""
    w = r.weights
    precision = r.data.get("precision") or f"{w.precision or '?'} (reported)"
    parts = [f"{device_class(w.device)} (reported)", precision]
    parts += [f"{r.data['resolution']} px"] if r.data.get("resolution") else []
    parts += [f"batch {r.data['batch']}"] if r.data.get("batch") else []
    return ", ".join(parts + [f"{w.kind} weights"])


def mismatch(cond: ranker_pb2.ClaimConditions, r: ProbeResult, weights_dependent: bool,
             weights_judged: bool = False) -> str:
    """Why a measurement cannot decide a claim made under ``cond``; empty when it can. ``weights_judged``:
    the decider weighs the weights itself (it may still contradict on a part that holds for any weights)."""
    w, d = r.weights, r.data
    if cond.device_class:  # the device is the service's word: it never lets a measurement decide a claim
        return (f"measured on a device the service reports as {device_class(w.device)} (not observed: a reported "
                f"condition never decides a claim); the claim is about {cond.device_class}")
    if cond.precision and cond.precision != d.get("precision"):
        measured = d.get("precision") or f"a precision only reported by the service ({w.precision or '?'})"
        return f"measured at {measured}; the claim is about {cond.precision}"
    if cond.resolution and d.get("resolution") and cond.resolution != d["resolution"]:
        return f"measured at {d['resolution']} px; the claim is about {cond.resolution} px"
    if cond.batch and d.get("batch") and cond.batch != d["batch"]:
        return f"measured at batch {d['batch']}; the claim is about batch {cond.batch}"
    if (weights_dependent or cond.weights_dependent) and not weights_judged and w.kind not in DECIDING_KINDS:
        return f"measured on {w.kind} weights; the claim is about the checkpoint's own weights"
    return ""


def _sources_for(metric: str, entry: ranker_pb2.CatalogEntry, skip_text: str = "") -> list[gateway_pb2.Source]:
    """Primary-source values of ``metric`` for this model: its signals and its other sourced claims."""
    out = [gateway_pb2.Source(url=s.source, locator=s.locator, as_of=s.as_of, value=s.value, unit=s.unit,
                              label=f"catalog signal {s.name}" + (f" ({s.conditions})" if s.conditions else ""))
           for s in entry.signals if s.name == metric and s.source]
    out += [gateway_pb2.Source(url=c.source, locator=c.locator, as_of=c.as_of, value=c.value, unit=c.unit,
                               label=c.claimed_by)
            for c in entry.claims if c.metric == metric and c.source and c.HasField("value") and c.text != skip_text]
    return out


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
        for s in _sources_for(claim.metric, target):
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


def does_not_prove(checks: Iterable[Check]) -> str:
    """What the checks cannot tell apart, from the table, each once."""
    return "; ".join(dict.fromkeys(f"{c.id}: {c.misses}" for c in checks))


def _title(ev: ModelEvidence, capability_id: str) -> str:
    own = BY_ID[capability_id].title if capability_id in BY_ID else capability_id
    return next((c.title for c in ev.entry.capabilities if c.id == capability_id), own)


def _row(ev: ModelEvidence, capability_id: str, claim: str, **kw: object) -> gateway_pb2.CapabilityEvidence:
    return gateway_pb2.CapabilityEvidence(model_id=ev.entry.id, capability_id=capability_id,
                                          title=_title(ev, capability_id), claim=claim, **kw)


def _results(capability_id: str, ev: ModelEvidence) -> list[tuple[Check, ProbeResult]]:
    checks = FOR_CAPABILITY.get(capability_id, [])
    return [(c, r) for c, r in ev.results if c in checks]


def _judged(check: Check, r: ProbeResult) -> Verdict:
    if r.fault:
        return Verdict(CONTRADICTED, f"out of contract: {r.fault}")
    if check.weights_dependent and r.weights.kind not in DECIDING_KINDS:
        return Verdict(UNDECIDED, f"measured on {r.weights.kind} weights: a mechanism check, the claim is about "
                                  "the checkpoint's own weights")
    return check.judge(r.data)


def _live_row(capability_id: str, ev: ModelEvidence) -> gateway_pb2.CapabilityEvidence | None:
    """Rule 3, or None when the capability has no check for this model or its checks decided nothing."""
    checks = FOR_CAPABILITY.get(capability_id, [])
    if not checks or not ev.served:
        return None
    base = _title(ev, capability_id).split(" (")[0]
    row = _row(ev, capability_id, "; ".join(dict.fromkeys(c.claim for c in checks)),
               check=",".join(c.id for c in checks))
    row.title = f"{base} (served here: {ev.described or 'this deployment'})"
    results = _results(capability_id, ev)
    if ev.info_error is not None and ev.live_requested:
        row.mark, row.unavailable_reason = UNAVAILABLE, f"GetModelInfo failed: {_reason(ev.info_error)}"
        row.detail = row.unavailable_reason
        return row
    if not results:
        if not ev.live_requested:
            return None  # not probed now and nothing cached: the sources decide
        row.mark, row.unavailable_reason = UNAVAILABLE, "no check result (not run within the budget)"
        row.detail = row.unavailable_reason
        return row
    row.probes.extend(r.probe for _, r in results)
    row.check = ",".join(dict.fromkeys(c.id for c, _ in results))
    row.does_not_prove = does_not_prove(c for c, _ in results)
    row.measured_conditions = measured_conditions(results[0][1])
    for _, r in results:
        row.measurements.extend(r.measurements)
    missing = [r.unavailable for _, r in results if r.unavailable is not None]
    verdicts = [(c, r, _judged(c, r)) for c, r in results if r.unavailable is None]
    if any(v.mark == UNDECIDED for _, _, v in verdicts) and not any(v.mark == CONTRADICTED for _, _, v in verdicts):
        ev.undecided[capability_id] = " | ".join(f"{r.probe}: {r.detail} → {v.why}" for _, r, v in verdicts)
        return None
    if any(v.mark == CONTRADICTED for _, _, v in verdicts):
        row.mark = CONTRADICTED
    elif missing:
        row.mark, row.unavailable_reason = UNAVAILABLE, _reason(missing[0])
    else:
        row.mark = VERIFIED
    row.detail = " | ".join(f"{r.probe} at {r.at} on {r.weights.service} ({r.weights.kind} weights): {r.detail} "
                            f"→ {v.why}" for _, r, v in verdicts)
    if missing:
        row.detail = "; ".join(filter(None, [row.detail, *(_reason(u) for u in missing)]))
    return row


def _from_sources(capability_id: str, claim: ranker_pb2.Claim | None, text: str, ev: ModelEvidence
                  ) -> gateway_pb2.CapabilityEvidence:
    """Rule 4 (plus the quality signals for prompt adherence), with what a check measured but could not decide."""
    row = _row(ev, capability_id, text)
    quality = [s for s in ev.entry.signals if s.dimension == "quality" and s.source] \
        if capability_id == "prompt-adherence" else []
    terms = ev.entry.license_terms
    if claim is not None and claim.source:
        row.mark = SUPPORTED
        row.sources.append(gateway_pb2.Source(url=claim.source, locator=claim.locator, as_of=claim.as_of,
                                              label=claim.claimed_by))
        row.detail = f"stated by {claim.claimed_by or 'the publisher'}: {claim.source} ({claim.locator})"
    elif "license" in capability_id and terms.source:
        row.mark = SUPPORTED
        row.sources.append(gateway_pb2.Source(url=terms.source, as_of=terms.as_of, label=f"licence {terms.id}"))
        row.detail = f"licence {terms.id} ({terms.commercial_use}): {terms.source}, read {terms.as_of}"
    elif quality:
        row.mark = SUPPORTED
        row.sources.extend(gateway_pb2.Source(url=s.source, locator=s.locator, as_of=s.as_of, value=s.value,
                                              unit=s.unit, label=f"catalog signal {s.name}") for s in quality)
        row.detail = "; ".join(f"{s.name} {_fmt(s.value)} ({s.source}, {s.locator})" for s in quality)
    elif ev.served and capability_id in SELF_DESCRIBED:
        row.mark = CLAIMED
        row.detail = f"reported by the service: {ev.reported or 'no description read'}; no live check observes it"
    else:
        row.mark = CLAIMED
        row.detail = ("not probed now (live probes off, nothing cached)" if ev.served and not ev.live_requested
                      and capability_id in FOR_CAPABILITY else "no probe and no primary source checks it")
    if capability_id in ev.undecided:
        row.check = ",".join(c.id for c in FOR_CAPABILITY[capability_id])
        row.detail += f"; measured live but not decided: {ev.undecided[capability_id]}"
        for _, r in _results(capability_id, ev):
            row.measurements.extend(r.measurements)
            row.measured_conditions = measured_conditions(r)
    return row


def _live_numeric(claim: ranker_pb2.Claim, ev: ModelEvidence) -> gateway_pb2.CapabilityEvidence | None:
    """Rule 1, or None when no check measured the claim's metric on this model."""
    check = DECIDED_BY[claim.metric]
    found = [r for c, r in ev.results if c is check
             and (not r.observed or any(m.name == claim.metric for m in r.measurements))]
    if not found or not ev.served:
        return None
    r = found[-1]
    if r.unavailable is not None:
        row = _row(ev, claim.capability_id, claim.text, claimed_value=claim.value, unit=claim.unit, mark=UNAVAILABLE)
        row.unavailable_reason = row.detail = _reason(r.unavailable)
    elif r.fault:
        row = _row(ev, claim.capability_id, claim.text, claimed_value=claim.value, unit=claim.unit,
                   mark=CONTRADICTED, detail=f"{r.probe}: the service answered out of contract: {r.fault}")
    else:
        why_not = mismatch(claim.conditions, r, check.weights_dependent, check.decides[claim.metric] in WEIGHTS_AWARE)
        verdict = Verdict(UNDECIDED, why_not) if why_not else check.decides[claim.metric](claim.value, r, r.weights.kind
                                                                                          in DECIDING_KINDS)
        said = (f"claimed {_fmt(claim.value)} {claim.unit} ({claim.claimed_by or 'catalog'}"
                f"{'; ' + claim.conditions.text if claim.conditions.text else ''}); {r.probe} on this deployment "
                f"({measured_conditions(r)}): {r.detail}")
        if verdict.mark == UNDECIDED:
            row = _from_sources(claim.capability_id, claim, claim.text, ev)
            row.claimed_value, row.unit = claim.value, claim.unit
            kept = row.detail if row.mark != CLAIMED else "no primary source states it"
            row.detail = f"{kept}; measured live: {said} — {verdict.why}, so it cannot decide the claim"
        else:
            row = _row(ev, claim.capability_id, claim.text, claimed_value=claim.value, unit=claim.unit,
                       mark=verdict.mark, detail=f"{said} → {verdict.why}")
    row.check, row.measured_conditions = check.id, measured_conditions(r)
    row.does_not_prove = does_not_prove([check])
    row.conditions.CopyFrom(claim.conditions)
    row.probes.append(r.probe)
    row.measurements.extend(r.measurements)
    return row


def capability_evidence(ev: ModelEvidence, tolerance_pt: float) -> list[gateway_pb2.CapabilityEvidence]:
    """One row per claim of every capability of the model (the description is the claim when there is
    none), each with its mark, plus one row per live-checked capability stating what its checks verified."""
    rows: list[gateway_pb2.CapabilityEvidence] = []
    claims_by_cap: dict[str, list[ranker_pb2.Claim]] = {}
    for claim in ev.entry.claims:
        claims_by_cap.setdefault(claim.capability_id, []).append(claim)
    for cap in ev.entry.capabilities:
        claims = claims_by_cap.get(cap.id, [])
        live = _live_row(cap.id, ev)
        if live is not None:  # what the checks verified, in their own words; the claims follow
            rows.append(live)
        elif not claims or cap.id in ev.undecided:
            rows.append(_from_sources(cap.id, None, cap.description, ev))
        rows.extend(_claim_row(claim, ev, tolerance_pt) for claim in claims)
    for check in OWN_ROWS:  # the architecture: a row of its own, which no behaviour row depends on
        if any(c is check for c, _ in ev.results):
            live = _live_row(check.id, ev)
            rows.append(live if live is not None else _from_sources(check.id, None, check.claim, ev))
    return rows


def _claim_row(claim: ranker_pb2.Claim, ev: ModelEvidence, tolerance_pt: float) -> gateway_pb2.CapabilityEvidence:
    if claim.HasField("value") and claim.metric in DECIDED_BY:
        row = _live_numeric(claim, ev)
        if row is not None:
            return row
        if ev.served and ev.live_requested:
            out = _row(ev, claim.capability_id, claim.text, claimed_value=claim.value, unit=claim.unit,
                       mark=UNAVAILABLE, check=DECIDED_BY[claim.metric].id)
            out.conditions.CopyFrom(claim.conditions)
            out.unavailable_reason = out.detail = (f"GetModelInfo failed: {_reason(ev.info_error)}" if ev.info_error
                                                   else f"no live measurement of {claim.metric} on this deployment")
            return out
    if claim.HasField("value") and claim.metric:
        row = _sourced_numeric(claim, ev, tolerance_pt)
    else:
        row = _from_sources(claim.capability_id, claim, claim.text, ev)
    row.conditions.CopyFrom(claim.conditions)
    return row


def mark_counts(rows: Iterable[gateway_pb2.CapabilityEvidence]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        name = gateway_pb2.EvidenceMark.Name(row.mark).removeprefix("EVIDENCE_MARK_").lower()
        counts[name] = counts.get(name, 0) + 1
    return counts
