"""The gateway's work: one Compare = catalog facts + live probes + cross-model quality + head-to-head
+ scores, fanned out concurrently under one budget, assembled into a ``gateway.v1.Comparison``.

The Comparison protobuf is the domain object here (the gateway's product is that document; copying
it into a parallel dataclass tree would only add a second place for every field). Downstream trouble
never fails a comparison: the part it would have produced is listed as unavailable with the reason
read from the error details. Only the client's own mistakes fail it (INVALID_ARGUMENT, NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from prometheus_client import Counter, Histogram
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.common.admission import Admission
from services.common.client import ErrorDetails
from services.common.errors import InvalidArgument, NotFound
from services.common.metrics import Metrics
from services.gateway.byo.registry import ByoRegistry
from services.gateway.cache import ProbeCache, lookup_counter
from services.gateway.compare import pipeline
from services.gateway.compare.options import Settings, validate
from services.gateway.compare.probes import Budget
from services.gateway.compare.run import Progress, Run
from services.gateway.config import GatewayConfig
from services.gateway.downstream import Downstream, DownstreamError
from services.gateway.routes.table import RouteTable
from services.gateway.weights_store import WeightsStore

log = logging.getLogger(__name__)

INFO_TTL_S = 5.0


class GatewayMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.compares = Counter("versus_gateway_comparisons", "Comparisons built, by outcome.", ("outcome",),
                                registry=r)
        self.compare_seconds = Histogram("versus_gateway_compare_seconds", "Time to build one comparison.",
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
                                         registry=r)
        self.probes = Counter("versus_gateway_probe_runs", "Probes run, by probe and result (ok: answered within "
                              "contract, failed: out of contract, unavailable).", ("probe", "result"), registry=r)
        self.downstream_errors = Counter("versus_gateway_downstream_errors", "Downstream calls that failed.",
                                         ("component", "code"), registry=r)


class Gateway:
    """Compare, ListModels, Leaderboard — transport-free toward the gateway's own clients."""

    def __init__(self, config: GatewayConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.m = GatewayMetrics(metrics)
        lookups = lookup_counter(metrics)
        self.cache: ProbeCache[object] = ProbeCache(config.cache_ttl_s, lookups)
        #: GetModelInfo / ListModels answers: fresh for INFO_TTL_S, one call shared by concurrent comparisons
        self.info_cache: ProbeCache[object] = ProbeCache(INFO_TTL_S, lookups)
        #: Comparisons running new live probe work at once (catalog-only and cached ones take no slot).
        self.admission = Admission(config.max_concurrent_compares, model="gateway", metrics=metrics,
                                   what="comparisons with live probe work")
        #: The configuration's lists, parsed once here (never per comparison).
        self.settings = Settings.parse(config)
        self.served = self.settings.served
        #: The weights store the gateway hashes itself (GATEWAY_WEIGHTS_ROOT); digests cached by path, size, mtime.
        self.weights_store = WeightsStore(config.weights_root)
        self.ds: Downstream | None = None
        self.byo: ByoRegistry | None = None
        #: Shadow and canary routes (--route, GATEWAY_ROUTES): parsed here, so a bad one stops the start.
        self.routes = RouteTable(config, metrics)

    async def start(self) -> None:
        self.ds = Downstream(self.config)
        self.byo = ByoRegistry(self.config, self.metrics)  # registered deployments and eval sets
        await self.byo.start()
        await self.routes.start(self.ds)

    async def close(self) -> None:
        await self.routes.close()  # mirrors dropped as "shutdown", buffered pairs sent once more
        if self.ds is not None:
            await self.ds.close()
        if self.byo is not None:
            await self.byo.close()

    @property
    def downstream(self) -> Downstream:
        assert self.ds is not None, "start() first"
        return self.ds

    # -- small read-through views ----------------------------------------------------------------
    async def cached_call(self, component: str, method: str, request: object, timeout: float) -> object:
        """A read-only call whose answer stays good for INFO_TTL_S; concurrent callers share one call."""
        key = (component, method, request.SerializeToString())  # type: ignore[attr-defined]

        async def call() -> object:
            return await self.downstream.call(component, method, request, timeout)

        try:
            reply, _ = await asyncio.wait_for(
                self.info_cache.get(key, f"{component}.{method}", call, live=True, ok=lambda _r: True),
                max(0.001, timeout))
        except TimeoutError:
            raise DownstreamError(component, ErrorDetails(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer within the "
                                                          "budget", reason="BUDGET_EXHAUSTED")) from None
        return reply

    async def list_models(self) -> gateway_pb2.ListModelsResponse:
        try:
            listed = await self.cached_call("ranker", "ListModels", ranker_pb2.ListModelsRequest(),
                                             self.config.call_timeout_s)
        except DownstreamError as exc:
            raise _client_error(exc) from None
        return gateway_pb2.ListModelsResponse(models=[
            gateway_pb2.CatalogModel(id=m.id, display_name=m.display_name, type=m.type,
                                     served_by=str(self.served[m.id]) if self._configured(m.id) else "")
            for m in listed.models])  # type: ignore[attr-defined]

    async def leaderboard(self, task: str = "") -> ranker_pb2.GetLeaderboardResponse:
        try:
            return await self.downstream.call("ranker", "GetLeaderboard", ranker_pb2.GetLeaderboardRequest(task=task),
                                              self.config.call_timeout_s)
        except DownstreamError as exc:
            raise _client_error(exc, field="task") from None

    # -- routes -----------------------------------------------------------------------------------------
    async def list_routes(self) -> list[gateway_pb2.RouteView]:
        """Every route this gateway serves, sorted by name, with the ranker's state (without history)."""
        return await self.routes.list_routes(self.config.call_timeout_s)

    async def get_route(self, name: str) -> gateway_pb2.RouteView:
        """One route's view (NotFound for a name this gateway does not serve)."""
        return await self.routes.get_route(name, self.config.call_timeout_s)

    async def feedback(self, request: gateway_pb2.FeedbackRequest) -> gateway_pb2.FeedbackResponse:
        return gateway_pb2.FeedbackResponse(result=await self.routes.feedback(request, self.config.call_timeout_s))

    def _configured(self, model_id: str) -> bool:
        by = self.served.get(model_id)
        return by is not None and self.downstream.serves(by)

    # -- Compare ------------------------------------------------------------------------------------
    async def compare(self, request: gateway_pb2.CompareRequest, *, timeout_s: float | None = None,
                      progress: Progress | None = None) -> gateway_pb2.Comparison:
        if request.eval_set and self.byo is not None:  # registered deployments on the user's eval set
            return await self.byo.compare(request, self.downstream, timeout_s=timeout_s, progress=progress)
        opts = validate(request, self.settings)
        started = time.perf_counter()
        budget_s = opts.budget_s if timeout_s is None else min(opts.budget_s, max(0.0, timeout_s - 0.25))
        run = Run(self, opts, Budget(time.monotonic() + budget_s, self.config.call_timeout_s), progress)
        try:
            comparison = await pipeline.execute(run)
        except BaseException:
            self.m.compares.labels("error").inc()
            raise
        finally:
            if run.admitted:
                self.admission.release(1)
        comparison.elapsed_ms = (time.perf_counter() - started) * 1e3
        self.m.compare_seconds.observe(comparison.elapsed_ms / 1e3)
        self.m.compares.labels("ok").inc()
        return comparison


def _client_error(exc: DownstreamError, field: str = "model_ids") -> Exception:
    """A downstream error that is the client's own mistake keeps its code; anything else is Unavailable."""
    from services.common.errors import Unavailable

    d = exc.details
    if d.code == grpc.StatusCode.NOT_FOUND:
        return NotFound(d.message, resource_type=d.resource_type or "model", resource_name=d.resource_name)
    if d.code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(d.violations[0][0] if d.violations else field, d.message)
    return Unavailable(f"{exc.component} is unavailable: {d.describe()}")


