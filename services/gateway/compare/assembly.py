"""Stage 6 of a comparison: the document — one report per model (catalog entry, served weights,
measurements, capability marks), the feature table and the notes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from versus.ranker.v1 import ranker_pb2

from services.gateway.compare import evidence
from services.gateway.compare.facts import fact_rows, notes

if TYPE_CHECKING:
    from services.gateway.compare.run import Run


def assemble(run: Run) -> None:
    scores = {s.model_id: s for s in run.c.scores.scores}
    for model_id in run.opts.model_ids:
        entry = run.catalog.get(model_id) or ranker_pb2.CatalogEntry(id=model_id, display_name=model_id)
        served = run.served.get(model_id)
        report = run.c.models.add(entry=entry, served_by=str(served.by) if served else "",
                                  times_matched=scores[model_id].times_matched if model_id in scores
                                  else run.played.get(model_id, 0))
        if model_id in scores:
            report.score.CopyFrom(scores[model_id])
        results = served.results if served else []
        measurements = [m for _, p in results for m in p.measurements]
        for _, p in results:
            if p.unavailable is not None:
                run.add_unavailable(p.unavailable)
        if served:
            report.weights.CopyFrom(served.weights)
        report.measurements.extend(measurements)
        ev = evidence.ModelEvidence(entry, served is not None, results, measurements, run.opts.live, run.catalog,
                                    served.described if served else "", served.reported if served else "",
                                    served.info_error if served else None)
        report.capabilities.extend(evidence.capability_evidence(ev, run.cfg.claim_tolerance_pt))
    run.c.facts.extend(fact_rows(run.c))
    run.c.notes.extend(notes(run.c, run.opts.live))
