"""Probe runs through the gateway's cache: a fresh result, the run another comparison has in flight, or
a new run when live probes were asked for (the first new run takes one of the gateway's live-work slots)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from versus.gateway.v1 import gateway_pb2

from services.gateway.compare.probes import ProbeResult, guarded, unavailable
from services.gateway.compare.run import Run
from services.gateway.weights import weights_key


async def probe(run: Run, component_key: str, weights: gateway_pb2.ServedWeights, name: str,
                fn: Callable[[], Awaitable[ProbeResult]], kind: str = "") -> ProbeResult | None:
    """One probe, cached per (component, weights digest, ``name``). ``kind`` labels the metrics (names of
    generated images carry prompts and seeds). None when live probes are off and nothing is cached."""
    key = (component_key, weights_key(weights), name)
    kind = kind or name
    if run.opts.live and not run.admitted and run.gw.cache.would_run(key):
        # only new probe work is bounded: catalog-only and cached comparisons are never refused
        run.gw.admission.acquire(1)
        run.admitted = True

    async def once() -> ProbeResult:
        result = await guarded(name, fn, weights)
        outcome = "unavailable" if not result.ran else "failed" if result.fault else "ok"
        run.gw.m.probes.labels(kind, outcome).inc()
        return result

    try:
        result, how = await asyncio.wait_for(
            run.gw.cache.get(key, kind, once, live=run.opts.live, ok=lambda r: r.ran),
            timeout=max(0.001, run.budget.remaining()))
    except TimeoutError:
        return unavailable(name, "budget exhausted before the probe finished", weights)
    if how in ("hit", "shared"):
        run.c.probes_cached += 1
    elif how == "run":
        run.c.probes_run += 1
    return result  # type: ignore[return-value]
