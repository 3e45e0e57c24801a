"""Probe results cached per (service, weights digest, probe) with a time to live, and one shared run
for concurrent comparisons that need the same probe (single flight).

Tracing: a shared run belongs to the trace of the comparison that started it (its "probe" span, under
which its downstream calls go); every other comparison that waits on it gets a "probe (shared)" span
that links to that run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter

from services.common import tracing
from services.common.metrics import Metrics

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    value: T
    expires: float


def lookup_counter(metrics: Metrics) -> Counter:
    """``versus_gateway_probe_cache_total{probe,result}``, shared by the caches of one gateway."""
    return Counter("versus_gateway_probe_cache", "Probe lookups by result (hit, shared, run, miss).",
                   ("probe", "result"), registry=metrics.registry)


class ProbeCache(Generic[T]):
    """``get(key, run, live)``: a fresh cached value, else the in-flight run's, else (when ``live``)
    a new run shared by every caller that asks meanwhile. ``ok`` says whether a result is a success:
    successes live ``ttl_s``, failures (a probe that could not run) only ``failure_ttl_s``, so an outage
    is retried soon but a flood of comparisons does not hammer a service that is down."""

    def __init__(self, ttl_s: float, lookups: Counter, *, max_entries: int = 4096,
                 failure_ttl_s: float = 10.0) -> None:
        self.ttl_s = ttl_s
        self.failure_ttl_s = min(ttl_s, failure_ttl_s)
        self.max_entries = max_entries
        self._values: dict[Hashable, _Entry[T]] = {}
        self._running: dict[Hashable, asyncio.Future[T]] = {}
        self._run_spans: dict[Hashable, tracing.Captured | None] = {}  # what shared waiters link to
        self.lookups = lookups  # one counter for every cache of a gateway (see lookup_counter)

    def fresh(self, key: Hashable) -> T | None:
        entry = self._values.get(key)
        if entry is not None and entry.expires > time.monotonic():
            return entry.value
        return None

    def would_run(self, key: Hashable) -> bool:
        """True when ``get`` with ``live`` would start new work (nothing fresh, nothing in flight)."""
        return self.fresh(key) is None and key not in self._running

    async def get(self, key: Hashable, probe: str, run: Callable[[], Awaitable[T]], *, live: bool,
                  ok: Callable[[T], bool]) -> tuple[T | None, str]:
        """(value, how): how is "hit", "shared", "run" or "miss" (not live and nothing fresh).

        A run is its own task: a caller that gives up (its budget ran out) does not cancel it for the
        others, and its result is cached when ``ok``."""
        cached = self.fresh(key)
        if cached is not None:
            self.lookups.labels(probe, "hit").inc()
            return cached, "hit"
        task = self._running.get(key)
        how = "shared"
        if task is None:
            if not live:
                self.lookups.labels(probe, "miss").inc()
                return None, "miss"
            span = tracing.start("probe", probe=probe)  # in this caller's trace; ended by the run
            task = asyncio.ensure_future(self._run(key, run, ok, span))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "exception not retrieved"
            self._running[key] = task
            self._run_spans[key] = tracing.context_of(span)
            self.lookups.labels(probe, "run").inc()
            return await asyncio.shield(task), "run"
        self.lookups.labels(probe, how).inc()
        with tracing.span("probe (shared)", links=[self._run_spans.get(key)], probe=probe):
            return await asyncio.shield(task), how

    async def _run(self, key: Hashable, run: Callable[[], Awaitable[T]], ok: Callable[[T], bool],
                   span: tracing.Span | None) -> T:
        try:
            with tracing.activate(span):
                value = await run()
            self._store(key, value, self.ttl_s if ok(value) else self.failure_ttl_s)
            return value
        finally:
            self._running.pop(key, None)
            self._run_spans.pop(key, None)

    def _store(self, key: Hashable, value: T, ttl_s: float) -> None:
        if len(self._values) >= self.max_entries:
            now = time.monotonic()
            for stale in [k for k, e in self._values.items() if e.expires <= now] or list(self._values)[:1]:
                self._values.pop(stale, None)
        if ttl_s > 0:
            self._values[key] = _Entry(value, time.monotonic() + ttl_s)
