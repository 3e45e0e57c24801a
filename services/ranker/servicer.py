"""RankerService over gRPC: protobuf ↔ backend calls, nothing more."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from versus.common.v1 import common_pb2
from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc, routes_pb2

from services.ranker.attestations import AttestationRecord
from services.ranker.backend import Leaderboard, RankerBackend
from services.ranker.catalog import CatalogEntry
from services.ranker.scoring import ScoreReport


def score_response(report: ScoreReport) -> ranker_pb2.ScoreResponse:
    """ScoreReport → ScoreResponse (also used by the gateway)."""
    return ranker_pb2.ScoreResponse(
        scores=[ranker_pb2.ModelScore(
            model_id=s.model_id, display_name=s.display_name, composite=s.composite, confidence=s.confidence,
            times_matched=s.times_matched, shared_composite=s.shared_composite,
            sub_scores=[ranker_pb2.SubScore(dimension=x.dimension, score=x.score, weight=x.weight,
                                            explanation=x.explanation, missing=x.missing) for x in s.sub_scores])
            for s in report.scores],
        leaders=[ranker_pb2.DimensionLeader(dimension=d, model_id=m) for d, m in report.leaders.items()],
        verdict=report.verdict, shared_dimensions=report.shared_dimensions,
        unshared_dimensions=report.unshared_dimensions)


def _attestation(r: AttestationRecord) -> ranker_pb2.Attestation:
    at = datetime.fromtimestamp(r.recorded_at, UTC).isoformat(timespec="seconds")
    return ranker_pb2.Attestation(model_id=r.model_id, digest=r.digest, fingerprint=r.fingerprint, recorded_at=at)


def _iso(value: object) -> str:
    return value.isoformat() if value is not None else ""


def _entry(e: CatalogEntry) -> ranker_pb2.CatalogEntry:
    lic, price = e.license, e.pricing
    return ranker_pb2.CatalogEntry(
        id=e.id, display_name=e.display_name, type=e.type, family=e.family, parameters=e.parameters or 0,
        parameters_source=e.parameters_source, hub_id=e.hub_id, published_files_source=e.published_files_source,
        published_files=[common_pb2.WeightFile(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes or 0)
                         for f in e.published_files],
        license=lic.summary(), pricing=price.summary(), checkpoint=e.checkpoint,
        capabilities=[common_pb2.Capability(id=c.id, title=c.title, description=c.description) for c in e.capabilities],
        signals=[ranker_pb2.Signal(dimension=s.dimension, name=s.name, value=s.value, unit=s.unit, source=s.source,
                                   as_of=s.as_of.isoformat(), measured=s.measured, locator=s.locator,
                                   conditions=s.conditions, note=s.note) for s in e.signals],
        claims=[ranker_pb2.Claim(capability_id=cap, text=c.text, claimed_by=c.claimed_by, metric=c.metric,
                                 value=c.value, unit=c.unit, source=c.source or "", locator=c.locator,
                                 as_of=_iso(c.as_of),
                                 conditions=ranker_pb2.ClaimConditions(**c.conditions.model_dump()),
                                 compared_with=[ranker_pb2.Comparison(subject=x.subject, value=x.value)
                                                for x in c.compared_with])
                for cap, c in e.claims()],
        not_found=[ranker_pb2.AbsentSignal(dimension=a.dimension, name=a.name, note=a.note) for a in e.not_found],
        license_terms=ranker_pb2.LicenseTerms(
            id=lic.id, open_weights=lic.open_weights, commercial_use=lic.commercial_use,
            revenue_threshold_usd=lic.revenue_threshold_usd or 0, source=lic.source or "", as_of=_iso(lic.as_of),
            note=lic.note),
        pricing_terms=ranker_pb2.PricingTerms(kind=price.kind, price_usd=price.price_usd, per=price.per,
                                              source=price.source or "", as_of=_iso(price.as_of), note=price.note),
        architecture=_architecture(e))


def _architecture(e: CatalogEntry) -> ranker_pb2.Architecture | None:
    a = e.architecture
    if a is None:
        return None
    return ranker_pb2.Architecture(layers=a.layers, hidden_size=a.hidden_size, num_labels=a.num_labels,
                                   labels_sha256=a.labels_sha256, source=a.source, locator=a.locator,
                                   as_of=a.as_of.isoformat(), labels_source=a.labels_source,
                                   labels_locator=a.labels_locator, note=a.note)


def _leaderboard(board: Leaderboard) -> ranker_pb2.GetLeaderboardResponse:
    return ranker_pb2.GetLeaderboardResponse(
        task=board.task, bootstrap_rounds=board.rounds, matches=board.matches, anchor_model=board.anchor,
        notes=list(board.notes),
        ratings=[ranker_pb2.Rating(model_id=r.model_id, rating=r.rating, ci_low=r.ci_low, ci_high=r.ci_high,
                                   times_matched=r.times_matched, rank=r.rank, wins=r.wins, losses=r.losses,
                                   ties=r.ties)
                 for r in board.rows])


class RankerServicer(ranker_pb2_grpc.RankerServiceServicer):
    def __init__(self, backend: RankerBackend) -> None:
        self.backend = backend

    async def Score(self, request: ranker_pb2.ScoreRequest,
                    context: grpc.aio.ServicerContext) -> ranker_pb2.ScoreResponse:
        return score_response(await self.backend.score(list(request.model_ids), request.task))

    async def RecordMatch(self, request: ranker_pb2.RecordMatchRequest,
                          context: grpc.aio.ServicerContext) -> ranker_pb2.RecordMatchResponse:
        match_id, duplicate = await self.backend.record_match(
            request.model_a, request.model_b, request.outcome, request.task, request.evidence, request.idempotency_key)
        return ranker_pb2.RecordMatchResponse(match_id=match_id, duplicate=duplicate)

    async def GetLeaderboard(self, request: ranker_pb2.GetLeaderboardRequest,
                             context: grpc.aio.ServicerContext) -> ranker_pb2.GetLeaderboardResponse:
        return _leaderboard(await self.backend.leaderboard(request.task))

    async def RegisterDeployment(self, request: ranker_pb2.RegisterDeploymentRequest,
                                 context: grpc.aio.ServicerContext) -> ranker_pb2.RegisterDeploymentResponse:
        existed = await self.backend.register_deployment(request.id, request.identity)
        return ranker_pb2.RegisterDeploymentResponse(existed=existed)

    async def RecordAttestation(self, request: ranker_pb2.RecordAttestationRequest,
                                context: grpc.aio.ServicerContext) -> ranker_pb2.RecordAttestationResponse:
        a = request.attestation
        record = await self.backend.record_attestation(a.model_id, a.digest, a.fingerprint)
        return ranker_pb2.RecordAttestationResponse(attestation=_attestation(record), created=record.created)

    async def GetAttestation(self, request: ranker_pb2.GetAttestationRequest,
                             context: grpc.aio.ServicerContext) -> ranker_pb2.GetAttestationResponse:
        record = await self.backend.attestation(request.model_id, request.digest)
        return ranker_pb2.GetAttestationResponse(attestation=_attestation(record))

    async def GetModel(self, request: ranker_pb2.GetModelRequest,
                       context: grpc.aio.ServicerContext) -> ranker_pb2.GetModelResponse:
        entry, times_matched = await self.backend.get_model(request.model_id)
        return ranker_pb2.GetModelResponse(model=_entry(entry), times_matched=times_matched)

    async def ListModels(self, request: ranker_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> ranker_pb2.ListModelsResponse:
        listed = await self.backend.list_models()
        return ranker_pb2.ListModelsResponse(models=[_entry(e) for e, _ in listed],
                                             times_matched=[n for _, n in listed])

    # -- shadow and canary routes (services/ranker/routes.py) -----------------------------------------
    async def RecordRoutePairs(self, request: routes_pb2.RecordRoutePairsRequest,
                               context: grpc.aio.ServicerContext) -> routes_pb2.RecordRoutePairsResponse:
        return await self.backend.route_book().record_pairs(request)

    async def GetRouteState(self, request: routes_pb2.GetRouteStateRequest,
                            context: grpc.aio.ServicerContext) -> routes_pb2.GetRouteStateResponse:
        state = await self.backend.route_book().state(request.name, request.without_inputs)
        return routes_pb2.GetRouteStateResponse(state=state)

    async def ListRoutes(self, request: routes_pb2.ListRoutesRequest,
                         context: grpc.aio.ServicerContext) -> routes_pb2.ListRoutesResponse:
        return routes_pb2.ListRoutesResponse(routes=await self.backend.route_book().listed())

    async def RecordFeedback(self, request: routes_pb2.RecordFeedbackRequest,
                             context: grpc.aio.ServicerContext) -> routes_pb2.RecordFeedbackResponse:
        return await self.backend.route_book().feedback(request)
