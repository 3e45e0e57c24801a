"""The routes a gateway serves (``--route``, ``GATEWAY_ROUTES``): what the engine and the OIP front door call.

Routes are parsed at construction (a bad one stops the start with a :class:`ConfigError`); at start each side is
described once over OIP (its labels and output, for pairing; its platform and versions, for its identity), the
mirror workers and the recorders start, and from then on a request for model ``NAME`` is served by route NAME.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket

from tritonclient.grpc import service_pb2
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import routes_pb2

from services.common.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound, Unavailable, quote
from services.common.metrics import Metrics
from services.gateway.config import GatewayConfig
from services.gateway.deployments import DeploymentSpec, ServedIdentity
from services.gateway.downstream import Downstream, DownstreamError
from services.gateway.oip_client import EndpointFault, EndpointOutage, OipClient
from services.gateway.routes import pairing, wire
from services.gateway.routes.metrics import RouteMetrics
from services.gateway.routes.recorder import Recorder
from services.gateway.routes.route import Route
from services.gateway.routes.spec import RouteSpec, parse_routes
from services.gateway.routes.upstream import Outcome

log = logging.getLogger(__name__)

DESCRIBE_TIMEOUT_S = 10.0
REDESCRIBE_S = 10.0
MAX_FEEDBACK = 10_000
MAX_ID = 256


class RouteTable:
    """Every route of this gateway, by name."""

    def __init__(self, config: GatewayConfig, metrics: Metrics) -> None:
        self.config = config
        self.specs: dict[str, RouteSpec] = parse_routes(config)
        self.metrics = RouteMetrics(metrics) if self.specs else None
        self.replica = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"
        self.routes: dict[str, Route] = {}
        self.identities: dict[str, str] = {}  # deployment id -> identity text
        self.sides: dict[str, pairing.Side] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ds: Downstream | None = None

    def __bool__(self) -> bool:
        return bool(self.specs)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, downstream: Downstream) -> None:
        if not self.specs:
            return
        assert self.metrics is not None
        self._ds = downstream
        deployments = {s.id: s for spec in self.specs.values() for s in (spec.primary, spec.candidate)}
        await asyncio.gather(*(self._describe(s) for s in deployments.values()))
        for name, spec in self.specs.items():
            recorder = Recorder(name, self.replica, lambda spec=spec: self.declaration(spec), self._ranker,
                                lambda state, name=name: self._on_state(name, state),
                                lambda n, name=name: self.metrics.records_lost.labels(name).inc(n))  # type: ignore[union-attr]
            route = Route(spec, self.metrics, recorder, self._sides(spec))
            route.start()
            self.routes[name] = route
            self._tasks.append(asyncio.ensure_future(recorder.run()))
        if len(self.identities) < len(deployments):
            self._tasks.append(asyncio.ensure_future(self._redescribe(deployments)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(r.close() for r in self.routes.values()))
        await asyncio.gather(*(r.recorder.close() for r in self.routes.values()))

    async def _describe(self, spec: DeploymentSpec) -> None:
        """Labels and identity of one deployment; one that is down keeps its registered identity until later."""
        client = OipClient(spec)
        try:
            endpoint = await client.describe(DESCRIBE_TIMEOUT_S)
        except (EndpointOutage, EndpointFault) as exc:
            log.warning("route deployment not described; pairs carry status and latency until it is",
                        extra={"deployment": spec.id, "error": str(exc)[:200]})
            return
        except ConfigError as exc:  # not an image classifier: the route compares latency and status only
            log.warning("route deployment is not a classifier; its route compares latency and status only",
                        extra={"deployment": spec.id, "error": str(exc)[:300]})
            endpoint = None
        finally:
            await client.close()
        if endpoint is not None:
            self.sides[spec.id] = pairing.Side(tuple(endpoint.labels), endpoint.output_name)
            served = ServedIdentity(spec.identity(), endpoint.platform, tuple(endpoint.versions))
        else:
            served = ServedIdentity(spec.identity())
        self.identities[spec.id] = served.text()

    async def _redescribe(self, deployments: dict[str, DeploymentSpec]) -> None:
        while len(self.identities) < len(deployments):
            await asyncio.sleep(REDESCRIBE_S)
            await asyncio.gather(*(self._describe(s) for d, s in deployments.items() if d not in self.identities))
            for route in self.routes.values():
                route.sides = self._sides(route.spec)

    def _sides(self, spec: RouteSpec) -> tuple[pairing.Side, pairing.Side]:
        return self.sides.get(spec.primary.id, pairing.Side()), self.sides.get(spec.candidate.id, pairing.Side())

    async def _ranker(self, method: str, request: object, timeout_s: float) -> object:
        assert self._ds is not None
        return await self._ds.call("ranker", method, request, timeout_s)

    def _on_state(self, name: str, state: routes_pb2.RouteState) -> None:
        spec = self.specs[name]
        route = self.routes.get(name)
        if route is not None and state.rolled_back and not route.rolled_back and spec.canary:
            log.warning("canary rolled back to 0%", extra={"route": name, "reason": state.rollback_reason[:200]})
        if route is not None:
            route.rolled_back = state.rolled_back
        assert self.metrics is not None
        self.metrics.state(name, state, {(b.metric, b.op, round(b.value, 12)): b.text() for b in spec.bounds})

    # -- what the ranker is told -------------------------------------------------------------------
    def declaration(self, spec: RouteSpec, share: float | None = None) -> routes_pb2.RouteDeclaration:
        primary, candidate = self._sides(spec)
        return routes_pb2.RouteDeclaration(
            name=spec.name, mode=spec.mode, share=spec.share if share is None else share,
            primary_id=spec.primary.id, primary_identity=self.identities.get(spec.primary.id,
                                                                             spec.primary.identity()),
            candidate_id=spec.candidate.id, candidate_identity=self.identities.get(spec.candidate.id,
                                                                                   spec.candidate.identity()),
            bounds=[routes_pb2.RouteBound(metric=b.metric, op=b.op, value=b.value) for b in spec.bounds],
            alpha=spec.alpha, labels=list(primary.labels), keep_inputs=spec.keep_inputs)

    # -- the OIP front door ------------------------------------------------------------------------
    def route(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None and name in self.specs:
            raise Unavailable(f"route {name} is starting")
        if route is None:
            raise NotFound(f"model {quote(name)} is not a route of this gateway; routes: "
                           f"{', '.join(sorted(self.routes)) or 'none'}", resource_type="model",
                           resource_name=name)
        return route

    async def infer(self, raw: bytes, call_id: str, timeout_s: float) -> Outcome:
        """Serve one ModelInfer request given as its bytes; the answering side's outcome."""
        try:
            fields = wire.strings(raw)
        except wire.WireError as exc:
            raise InvalidArgument("request", f"not a valid ModelInferRequest ({exc})") from None
        route = self.route(fields.get(wire.MODEL_NAME, ""))
        return await route.infer(raw, pair_id(fields.get(wire.REQUEST_ID, ""), call_id), timeout_s, call_id)

    async def model_metadata(self, request: service_pb2.ModelMetadataRequest,
                             timeout_s: float) -> service_pb2.ModelMetadataResponse:
        """The primary's metadata, under the route's name."""
        route = self.route(request.name)
        spec = route.spec.primary
        reply = await route.primary.stub.ModelMetadata(
            service_pb2.ModelMetadataRequest(name=spec.model, version=spec.version),
            timeout=max(0.001, timeout_s), metadata=route.primary.metadata)
        reply.name = route.spec.name
        return reply

    async def model_ready(self, name: str, timeout_s: float) -> bool:
        route = self.routes.get(name)
        if route is None:
            return False
        spec = route.spec.primary
        reply = await route.primary.stub.ModelReady(service_pb2.ModelReadyRequest(name=spec.model,
                                                                                  version=spec.version),
                                                    timeout=max(0.001, timeout_s), metadata=route.primary.metadata)
        return bool(reply.ready)

    # -- views and feedback --------------------------------------------------------------------------
    def _view(self, route: Route) -> gateway_pb2.RouteView:
        return gateway_pb2.RouteView(route=self.declaration(route.spec, route.share()),
                                     local=route.counters.total, mirrors_pending=route.pending,
                                     records_pending=route.recorder.pending)

    async def list_routes(self, timeout_s: float) -> list[gateway_pb2.RouteView]:
        views = [self._view(self.routes[name]) for name in sorted(self.routes)]
        if not views:
            return views
        try:
            listed = await self._ranker("ListRoutes", routes_pb2.ListRoutesRequest(), timeout_s)
            states = {s.route.name: s for s in listed.routes}  # type: ignore[attr-defined]
            error = ""
        except DownstreamError as exc:
            states, error = {}, f"ranker: {exc.details.describe()[:300]}"
        for view in views:
            if view.route.name in states:
                view.state.CopyFrom(states[view.route.name])
            else:
                view.state_error = error or "no pairs recorded yet"
        return views

    async def get_route(self, name: str, timeout_s: float) -> gateway_pb2.RouteView:
        view = self._view(self.route(name))
        try:
            reply = await self._ranker("GetRouteState", routes_pb2.GetRouteStateRequest(name=name), timeout_s)
            view.state.CopyFrom(reply.state)  # type: ignore[attr-defined]
        except DownstreamError as exc:
            view.state_error = ("no pairs recorded yet" if exc.details.code.name == "NOT_FOUND"
                                else f"ranker: {exc.details.describe()[:300]}")
        return view

    async def feedback(self, request: gateway_pb2.FeedbackRequest,
                       timeout_s: float) -> routes_pb2.RecordFeedbackResponse:
        if request.route:
            self.route(request.route)
        if not request.items:
            raise InvalidArgument("items", "no feedback items")
        if len(request.items) > MAX_FEEDBACK:
            raise InvalidArgument("items", f"at most {MAX_FEEDBACK} items per call, got {len(request.items)}")
        forwarded = routes_pb2.RecordFeedbackRequest(route=request.route, items=request.items)
        try:
            return await self._ranker("RecordFeedback", forwarded, timeout_s)  # type: ignore[return-value]
        except DownstreamError as exc:
            raise _feedback_error(exc) from None


def pair_id(oip_id: str, call_id: str) -> str:
    """The id a pair is recorded under: the OIP id; without one, the call's x-request-id (returned to the client
    in the trailing metadata); an id the ranker would refuse (over 256 characters, control characters) is
    recorded by its digest."""
    if not oip_id:
        return call_id
    if len(oip_id) > MAX_ID or any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in oip_id):
        return "sha256:" + hashlib.sha256(oip_id.encode()).hexdigest()
    return oip_id


def _feedback_error(exc: DownstreamError) -> Exception:
    d = exc.details
    code = d.code.name
    if code == "INVALID_ARGUMENT":
        field, problem = d.violations[0] if d.violations else ("items", d.message)
        return InvalidArgument(field, problem)
    if code == "NOT_FOUND":
        return NotFound(d.message, resource_type=d.resource_type or "route", resource_name=d.resource_name)
    if code == "FAILED_PRECONDITION":
        return FailedPrecondition(d.message)
    log.warning("feedback not recorded", extra={"error": d.describe()[:300]})
    return Unavailable(f"ranker is unavailable: {d.describe()[:300]}")
