"""One comparison while it is built: its state, its progress, and the order of its stages.

Each stage is a module of its own (``catalog``, ``checks``, ``quality``, ``duels``, ``scores``,
``assembly``) with functions that take the :class:`Run`; this module only holds what every stage
shares — the document being filled in, the served models, the probe cache path, the unavailable list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.common.client import ErrorDetails
from services.gateway.compare.probes import Budget, ProbeResult, VitInfo, guarded, unavailable
from services.gateway.compare.sd35_probes import VariantInfo
from services.gateway.config import ServedBy
from services.gateway.downstream import DownstreamError

if TYPE_CHECKING:
    from services.gateway.engine import Gateway, Options

Progress = Callable[[str, str, float], None]


@dataclass
class Served:
    """One compared model served live here."""

    model_id: str
    by: ServedBy
    weights: gateway_pb2.ServedWeights = field(default_factory=gateway_pb2.ServedWeights)
    probes: dict[str, ProbeResult] = field(default_factory=dict)  # by check id ("vit.batching", "sd35.generate")
    #: What this deployment showed of itself, in words ("a 2-layer random pipeline"), for live row titles.
    described: str = ""
    #: GetModelInfo's own description (backend, device, files), shown as "reported by the service".
    reported: str = ""
    #: Why GetModelInfo failed: every live row of the model is then UNAVAILABLE with this reason.
    info_error: gateway_pb2.Unavailable | None = None


class Run:
    """The state of one comparison while it is built."""

    def __init__(self, gw: Gateway, opts: Options, budget: Budget, progress: Progress | None) -> None:
        self.gw = gw
        self.ds = gw.downstream
        self.cfg = gw.config
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

    async def execute(self) -> gateway_pb2.Comparison:
        from services.gateway.compare import assembly, catalog, checks, duels, quality, scores

        self.progress("catalog", "reading the catalog", 0.02)
        await catalog.read_catalog(self)
        self.progress("probe", "asking the model services what they serve", 0.08)
        await catalog.read_infos(self)
        await quality.choose_classes(self)  # the client's classes are checked against the judge before any probe
        await checks.run_checks(self)
        await quality.judge_generations(self)
        played = await duels.head_to_head(self)
        self.progress("scores", "scores and leaderboard from the ranker", 0.92)
        await scores.read_scores(self, played)
        assembly.assemble(self)
        self.progress("done", "comparison ready", 1.0)
        return self.c

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
        by = self.gw.served.get(model_id)
        return by is not None and by.t2i

    async def probe(self, component_key: str, weights: gateway_pb2.ServedWeights, probe: str,
                    fn: Callable[[], Awaitable[ProbeResult]], kind: str = "") -> ProbeResult | None:
        """One probe through the cache (fresh result, the shared in-flight run, or a new run when live).
        ``kind`` labels the metrics (probe names of generated images carry prompts and seeds)."""
        key = (component_key, weights.digest, probe)
        kind = kind or probe
        if self.opts.live and not self.admitted and self.gw.cache.would_run(key):
            # only new probe work is bounded: catalog-only and cached comparisons are never refused
            self.gw.admission.acquire(1)
            self.admitted = True

        async def run() -> ProbeResult:
            result = await guarded(probe, fn, weights)
            outcome = "unavailable" if not result.ran else "failed" if result.fault else "ok"
            self.gw.m.probes.labels(kind, outcome).inc()
            return result

        try:
            result, how = await asyncio.wait_for(
                self.gw.cache.get(key, kind, run, live=self.opts.live, ok=lambda r: r.ran),
                timeout=max(0.001, self.budget.remaining()))
        except TimeoutError:
            return unavailable(probe, "budget exhausted before the probe finished", weights)
        if how in ("hit", "shared"):
            self.c.probes_cached += 1
        elif how == "run":
            self.c.probes_run += 1
        return result  # type: ignore[return-value]
