"""The feature table (one row per fact, one cell per model, every cell with its provenance) and the
plain-words notes of a comparison."""

from __future__ import annotations

from collections.abc import Callable

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.gateway.weights import digest_words

Cell = tuple[str, str]  # (value, provenance)
NOT_FOUND = ("not found", "no primary source in the catalog")


def _signal(entry: ranker_pb2.CatalogEntry, dimension: str) -> ranker_pb2.Signal | None:
    return next((s for s in entry.signals if s.dimension == dimension and s.source), None)


def _sub(score: ranker_pb2.ModelScore, dimension: str) -> Cell:
    sub = next((s for s in score.sub_scores if s.dimension == dimension), None)
    if sub is None:
        return ("—", "not scored (ranker unavailable)")
    if sub.missing:
        return ("missing", f"ranker: {sub.explanation}")
    return (f"{sub.score:.1f}/100", f"ranker: {sub.explanation}")


def _measured(report: gateway_pb2.ModelReport, name: str, fmt: str) -> Cell:
    m = next((m for m in report.measurements if m.name == name), None)
    if m is None:
        return ("—", "not measured (not served here, or live probes off)")
    w = m.weights
    kind = f"{w.kind} weights" + (", mechanism check" if m.mechanism_only else "")
    # a speed belongs to the deployment that showed it, not to the catalog's model
    return (f"{fmt.format(m.value)} on {w.service} ({w.device}, {w.precision}, {w.kind} weights)",
            f"live probe {m.probe} at {m.measured_at}: {m.detail}; {w.served_model_id}, {w.backend}, {kind}, "
            f"sha256 {w.digest[:12]}")


def _parameters(report: gateway_pb2.ModelReport) -> Cell:
    entry = report.entry
    if entry.parameters:
        sig = next((s for s in entry.signals if s.name in ("parameters", "param_count")), None)
        where = (f"catalog: {entry.parameters_source}" if entry.parameters_source else
                 f"catalog: {sig.source} ({sig.locator}, read {sig.as_of})" if sig else
                 "catalog entry (no source recorded)")
        return (f"{entry.parameters / 1e6:,.1f} M", where)
    return NOT_FOUND


def _quality_metric(report: gateway_pb2.ModelReport) -> Cell:
    sig = _signal(report.entry, "quality")
    if sig is None:
        return NOT_FOUND
    return (f"{sig.name} {sig.value:g} {sig.unit}".strip(), f"{sig.source} ({sig.locator}, read {sig.as_of})")


def _license(report: gateway_pb2.ModelReport) -> Cell:
    terms = report.entry.license_terms
    return (report.entry.license or "not found",
            f"{terms.source} (read {terms.as_of})" if terms.source else "no primary source in the catalog")


def _pricing(report: gateway_pb2.ModelReport) -> Cell:
    terms = report.entry.pricing_terms
    return (report.entry.pricing or "not found",
            f"{terms.source} (read {terms.as_of})" if terms.source else "licence terms (self-hosted open weights)"
            if terms.kind == "free-self-hosted" else "no primary source in the catalog")


def _served(report: gateway_pb2.ModelReport) -> Cell:
    if not report.served_by:
        return ("not served here", "no service of this deployment hosts it")
    w = report.weights
    return (f"{report.served_by}: {w.kind} weights", f"GetModelInfo of {w.service}: {w.served_model_id}, "
                                                       f"{digest_words(w)}, {w.backend}, "
                                                       f"{w.device}, {w.precision}")


ROWS: list[tuple[str, Callable[[gateway_pb2.ModelReport], Cell]]] = [
    ("Type", lambda r: (r.entry.type or "—", "catalog entry")),
    ("Family", lambda r: (r.entry.family or "—", "catalog entry")),
    ("Checkpoint", lambda r: (r.entry.checkpoint or "—", "catalog entry")),
    ("Parameters", _parameters),
    ("License", _license),
    ("Pricing", _pricing),
    ("Rank score on shared dimensions", lambda r: (f"{r.score.shared_composite:.1f}/100", "ranker: the blend over the "
                                                   "dimensions every compared model has (the verdict's basis)")
     if r.score.model_id else ("—", "ranker unavailable")),
    ("Rank score (own composite)", lambda r: (f"{r.score.composite:.1f}/100 (confidence {r.score.confidence:.0%})",
                                              "ranker: this model's own blend of the sub-scores it has (secondary)")
     if r.score.model_id else ("—", "ranker unavailable")),
    ("Quality", lambda r: _sub(r.score, "quality")),
    ("Primary quality metric", _quality_metric),
    ("Adoption", lambda r: _sub(r.score, "adoption")),
    ("Ecosystem", lambda r: _sub(r.score, "ecosystem")),
    ("Match graph", lambda r: _sub(r.score, "match_graph")),
    ("Times matched", lambda r: (str(r.times_matched), "ranker match graph")),
    ("Served by", _served),
    ("Latency of this deployment, 1 image (ViT: p50 of 10)", lambda r: _measured(r, "latency_p50_ms", "{:.1f} ms")
     if r.served_by == "vit" else _measured(r, "generate_ms", "{:.0f} ms")),
    ("Throughput of this deployment", lambda r: _measured(r, "throughput_img_s", "{:.1f} img/s")),
]


def fact_rows(c: gateway_pb2.Comparison) -> list[gateway_pb2.FactRow]:
    rows = []
    for name, fn in ROWS:
        cells = [fn(report) for report in c.models]
        rows.append(gateway_pb2.FactRow(name=name, cells=[gateway_pb2.FactCell(value=v, provenance=p)
                                                           for v, p in cells]))
    return rows


def notes(c: gateway_pb2.Comparison, live: bool) -> list[str]:
    out = []
    for report in c.models:
        w = report.weights
        if report.served_by and w.kind == "operator-attested":
            out.append(f"{report.entry.display_name or report.entry.id} is served here with operator-attested "
                       f"weights (sha256 {w.digest[:16]}, pinned by the deployer: {w.proof}); marks that depend on "
                       "the weights rest on that attestation.")
        elif report.served_by and w.kind != "real" and w.kind != "unknown":
            out.append(f"{report.entry.display_name or report.entry.id} is served here with {w.kind} weights "
                       f"(sha256 {w.digest[:16]}): its live measurements check the serving mechanism — shapes, "
                       "determinism, limits, speed — not the model's quality. Quality comes only from the cited "
                       "sources.")
    for q in c.quality:
        out.append(f"Prompt adherence of {q.generator}: the budget bought {q.images} judged images of the "
                   f"{q.requested} asked for ({q.lost} lost to outages, {q.failed} failed by fault and counted as "
                   "misses); a rate is verified only when its Wilson 95% lower bound clears the bar.")
    if c.duels:
        task = c.duels[0].task
        if task.startswith("mechanism."):
            out.append(f"The head-to-head ran on weights that are not the real ones, so its outcomes were recorded "
                       f"under the task '{task}', apart from real evidence: they show the comparison works, not "
                       "which model is better. They count in no score, times matched or real leaderboard; their "
                       "own leaderboard is shown apart.")
        recorded = sum(1 for d in c.duels if d.match_id)
        repeats = sum(1 for d in c.duels if d.duplicate)
        out.append(f"{len(c.duels)} duels; {recorded} recorded in the ranker, {repeats} of them already recorded by "
                   "an earlier identical comparison (idempotency keys: never counted twice).")
    if not live:
        out.append("Live probes were not requested: capability marks come from cached probe results where fresh "
                   "ones exist, otherwise from the catalog's sources.")
    for u in c.unavailable:
        out.append(f"Unavailable: {u.component}" + (f" ({u.code}{', ' + u.reason if u.reason else ''})"
                                                    if u.code else "") + f": {u.message}")
    return out
