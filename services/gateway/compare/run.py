"""The state of one comparison while it is built: the document being filled in, the served models and
what was observed of them, the progress, and the unavailable list. Nothing else: the order of the
stages is :mod:`services.gateway.compare.pipeline`, each stage a module of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.common.admission import Admission
from services.common.client import ErrorDetails
from services.gateway.cache import ProbeCache
from services.gateway.compare.options import Options, Settings
from services.gateway.compare.probes import Budget, ProbeResult, VitInfo
from services.gateway.compare.sd35_probes import VariantInfo
from services.gateway.config import GatewayConfig, ServedBy
from services.gateway.downstream import Downstream, DownstreamError

if TYPE_CHECKING:
    from services.gateway.compare.check import Check

Progress = Callable[[str, str, float], None]


class Host(Protocol):
    """What a comparison uses of the gateway that runs it (the gateway's engine, duck-typed: no wing
    depends on the assembly above it)."""

    config: GatewayConfig
    settings: Settings
    cache: ProbeCache[object]
    admission: Admission
    m: Any  # the gateway's metrics: probes, downstream_errors

    @property
    def downstream(self) -> Downstream: ...

    async def cached_call(self, component: str, method: str, request: object, timeout: float) -> object: ...


@dataclass
class Served:
    """One compared model served live here."""

    model_id: str
    by: ServedBy
    weights: gateway_pb2.ServedWeights = field(default_factory=gateway_pb2.ServedWeights)
    #: What each declared check observed of it, in the order they ran (a check may observe more than once:
    #: the precision check once per other deployment).
    results: list[tuple[Check, ProbeResult]] = field(default_factory=list)
    #: What this deployment showed of itself, in words ("a 2-layer random pipeline"), for live row titles.
    described: str = ""
    #: GetModelInfo's own description (backend, device, files), shown as "reported by the service".
    reported: str = ""
    #: Why GetModelInfo failed: every live row of the model is then UNAVAILABLE with this reason.
    info_error: gateway_pb2.Unavailable | None = None

    def result_of(self, check: Check) -> ProbeResult | None:
        """The last observation of ``check`` on this model, if any."""
        return next((r for c, r in reversed(self.results) if c is check), None)


class Run:
    """The state of one comparison while it is built."""

    def __init__(self, gw: Host, opts: Options, budget: Budget, progress: Progress | None) -> None:
        self.gw = gw
        self.ds = gw.downstream
        self.cfg = gw.config
        self.settings = gw.settings
        self.opts = opts
        self.budget = budget
        #: Probe runs are shared with (and cached for) other comparisons, so they run on the gateway's own
        #: budget, not on this caller's: a caller with a short deadline stops waiting, the run goes on.
        self.probe_budget = Budget(time.monotonic() + gw.config.compare_budget_s, gw.config.call_timeout_s)
        self._progress = progress
        self._fraction = 0.0
        #: Holds one of the gateway's live-work slots (taken at its first new probe run, released at the end).
        self.admitted = False
        self.c = gateway_pb2.Comparison(model_ids=list(opts.model_ids), comparison_id=opts.comparison_id(),
                                        created_at=datetime.now(UTC).isoformat(timespec="seconds"))
        self.catalog: dict[str, ranker_pb2.CatalogEntry] = {}
        self.played: dict[str, int] = {}
        self.vit: VitInfo | None = None
        self.variants: dict[str, VariantInfo] = {}
        self.served: dict[str, Served] = {}
        self.judgements: list[gateway_pb2.Judgement] = []
        self.labels: list[str] = []
        self.classes: list[str] = []
        self.generators: list[str] = []

    def progress(self, stage: str, detail: str, fraction: float) -> None:
        """Report progress; concurrent stages report their own estimates, so the fraction never goes back."""
        self._fraction = max(self._fraction, fraction)
        if self._progress is not None:
            self._progress(stage, detail, self._fraction)

    def unavailable(self, component: str, exc: DownstreamError | str) -> gateway_pb2.Unavailable:
        if isinstance(exc, DownstreamError):
            d: ErrorDetails = exc.details
            self.gw.m.downstream_errors.labels(exc.component, d.code.name).inc()
            item = gateway_pb2.Unavailable(component=component, code=d.code.name, reason=d.reason,
                                           message=d.message)
        else:
            item = gateway_pb2.Unavailable(component=component, message=exc)
        self.add_unavailable(item)
        return item

    def add_unavailable(self, item: gateway_pb2.Unavailable) -> None:
        if item not in self.c.unavailable:
            self.c.unavailable.append(item)

    def is_t2i(self, model_id: str) -> bool:
        by = self.settings.served.get(model_id)
        return by is not None and by.t2i
