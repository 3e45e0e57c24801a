"""Shadow and canary routes in the ranker (docs/SHADOW.md): batches of paired outcomes in, route state out.

Pairs feed only their route's own confidence sequences (``services.common.route_stats``), never a match, a
catalog score or a leaderboard. The state of a route is computed from every replica's pairs of the current
epoch and cached per route: it is recomputed only when pairs or labels changed (counters, decisions and the
rollback flag are read each time, they are small). No gRPC here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from google.protobuf import json_format
from versus.ranker.v1 import routes_pb2

from services.common import route_stats as rs
from services.common.errors import FailedPrecondition, NotFound, quote
from services.common.route_stats import BoundResult, Interval, PairArrays
from services.ranker.route_checks import (
    ROLLBACK_METRICS,
    checked_batch,
    checked_feedback,
    fingerprint,
    name_problem,
    raise_violations,
    route_key,
)
from services.ranker.route_store import ROUTE_PREFIX, RouteStore, StoredPair

#: Disagreeing rows shown with a route's state (the latest ones).
MAX_DISAGREEMENTS = 50
#: A route's statistics are recomputed from every pair of its epoch (O(pairs)). The write path (RecordRoutePairs,
#: once a second per gateway replica) recomputes a costly route at most once per cost / WRITE_DUTY seconds, so each
#: route's statistics take at most a tenth of the ranker's statistics thread through writes, however many pairs it
#: holds; in between, a write is answered with the last computed state (its ``pairs`` says how many it covers).
#: Reads (GetRouteState, ListRoutes, the pages) always recompute what changed. An epoch of fewer than
#: THROTTLE_FROM_PAIRS pairs (some tens of ms to compute) is recomputed on every write.
WRITE_DUTY = 0.1
THROTTLE_FROM_PAIRS = 5_000
#: Histogram bins of each latency distribution (over shared, log-spaced edges).
LATENCY_BINS = 30
_STATES = {rs.UNDECIDED: routes_pb2.DECISION_STATE_UNDECIDED, rs.HOLDS: routes_pb2.DECISION_STATE_HOLDS,
           rs.VIOLATED: routes_pb2.DECISION_STATE_VIOLATED}

Db = Callable[..., Awaitable]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else ""


def _interval(i: Interval) -> routes_pb2.SequenceInterval:
    return routes_pb2.SequenceInterval(lower=i.lower, upper=i.upper, estimate=i.estimate, n=i.n, method=i.method)


def _interval_json(i: Interval) -> str:
    return json.dumps([i.lower, i.upper, i.estimate, i.n, i.method])


def _latency(x: np.ndarray, edges: list[float], counts: list[int], p50: float, p90: float,
             p99: Interval) -> routes_pb2.LatencySummary:
    return routes_pb2.LatencySummary(edges_s=edges, counts=counts, p50_s=p50, p90_s=p90, p99_s=p99.estimate,
                                     p99_interval=_interval(p99), n=len(x))


def arrays(pairs: list[StoredPair], labels: dict[tuple[str, int], str]) -> PairArrays:
    """One epoch's pairs (id order) as the arrays the statistics read; labelled rows in the same order."""
    agree, top5, primary_right, candidate_right = [], [], [], []
    for p in pairs:
        for j, (pl, cl, overlap) in enumerate(p.rows):
            agree.append(pl == cl)
            top5.append(overlap / 5 if overlap >= 0 else np.nan)
            if (label := labels.get((p.request_id, j))) is not None:
                primary_right.append(pl == label)
                candidate_right.append(cl == label)
    return PairArrays(
        agree=np.array(agree, dtype=bool), top5=np.array(top5, dtype=float),
        primary_error=np.array([p.primary_status != "OK" for p in pairs], dtype=bool),
        candidate_error=np.array([p.candidate_status != "OK" for p in pairs], dtype=bool),
        primary_latency_s=np.array([p.primary_latency_s for p in pairs], dtype=float),
        candidate_latency_s=np.array([p.candidate_latency_s for p in pairs], dtype=float),
        primary_right=np.array(primary_right, dtype=bool), candidate_right=np.array(candidate_right, dtype=bool))


def compute(declaration: routes_pb2.RouteDeclaration, pairs: list[StoredPair],
            labels: dict[tuple[str, int], str]) -> tuple[routes_pb2.RouteState, list[BoundResult]]:
    """The state that depends on pairs and labels only (pure: runs off the event loop)."""
    a = arrays(pairs, labels)
    bounds = tuple(rs.Bound(b.metric, b.op, b.value) for b in declaration.bounds) or rs.DEFAULT_BOUNDS
    stats = rs.route_statistics(a, bounds, declaration.alpha or rs.DEFAULT_ALPHA)
    state = routes_pb2.RouteState(
        route=declaration, pairs=len(pairs), rows=len(a.agree),
        distinct_inputs=len({p.input_digest for p in pairs if p.input_digest}),
        agreement=_interval(stats.agreement), top5_overlap=_interval(stats.top5_overlap),
        primary_error_rate=_interval(stats.primary_error_rate),
        candidate_error_rate=_interval(stats.candidate_error_rate),
        first_pair_at=iso(pairs[0].recorded_at) if pairs else "", last_pair_at=iso(pairs[-1].recorded_at) if pairs
        else "")
    edges, primary_counts, candidate_counts = rs.latency_histogram(a.primary_latency_s, a.candidate_latency_s,
                                                                   LATENCY_BINS)
    state.primary_latency.CopyFrom(_latency(a.primary_latency_s, edges, primary_counts, stats.primary_p50,
                                            stats.primary_p90, stats.primary_p99))
    state.candidate_latency.CopyFrom(_latency(a.candidate_latency_s, edges, candidate_counts, stats.candidate_p50,
                                              stats.candidate_p90, stats.candidate_p99))
    ends = np.cumsum([len(p.rows) for p in pairs])  # rows up to and including each pair
    for n, lower, upper, estimate in stats.history:
        at = pairs[min(int(np.searchsorted(ends, n)), len(pairs) - 1)].recorded_at if pairs else 0.0
        state.agreement_history.add(n=n, lower=lower, upper=upper, estimate=estimate, at=iso(at))
    acc = stats.accuracy
    state.accuracy.CopyFrom(routes_pb2.LabelledAccuracy(
        labelled=acc.labelled, primary=_interval(acc.primary), candidate=_interval(acc.candidate),
        discordant=acc.discordant, candidate_right=acc.candidate_right,
        candidate_share_of_discordant=_interval(acc.candidate_share_of_discordant), verdict=acc.verdict,
        mcnemar_p_fixed_n=acc.mcnemar_p_fixed_n))
    for p in reversed(pairs):
        for j, (pl, cl, _) in reversed(list(enumerate(p.rows))):
            if pl != cl and len(state.disagreements) < MAX_DISAGREEMENTS:
                state.disagreements.add(request_id=p.request_id, row=j, primary_label=pl, candidate_label=cl,
                                        input_digest=p.input_digest, recorded_at=iso(p.recorded_at),
                                        label=labels.get((p.request_id, j), ""))
        if len(state.disagreements) >= MAX_DISAGREEMENTS:
            break
    return state, list(stats.bounds)


@dataclass
class _Cached:
    epoch: int
    version: tuple[int, int, int, int]
    pairs: list[StoredPair]
    labels: dict[tuple[str, int], str]
    state: routes_pb2.RouteState
    bounds: list[BoundResult]
    computed_at: float = 0.0  # time.monotonic() when it was computed
    cost_s: float = 0.0  # how long reading the new pairs and computing took

    def fresh_enough_for_a_write(self, epoch: int) -> bool:
        """Whether a write may be answered with this (possibly stale) state instead of a recomputation."""
        return (self.epoch == epoch and len(self.pairs) >= THROTTLE_FROM_PAIRS
                and time.monotonic() - self.computed_at < self.cost_s / WRITE_DUTY)


class RouteBook:
    """The routes of one ranker replica: checks, storage through ``db`` (the database thread), statistics on
    their own thread, and the per-route cache."""

    def __init__(self, store: RouteStore, db: Db) -> None:
        self.store = store
        self._db = db
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ranker-routes")
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- RecordRoutePairs -----------------------------------------------------------------------------
    async def record_pairs(self, request: routes_pb2.RecordRoutePairsRequest) -> routes_pb2.RecordRoutePairsResponse:
        pairs, counters = checked_batch(request)  # everything checked before any write
        d = routes_pb2.RouteDeclaration()
        d.CopyFrom(request.route)
        if not d.bounds:  # what the route is decided on is what it shows
            d.bounds.extend(routes_pb2.RouteBound(metric=b.metric, op=b.op, value=b.value) for b in rs.DEFAULT_BOUNDS)
        d.alpha = d.alpha or rs.DEFAULT_ALPHA
        fp = fingerprint(d)
        declaration = json_format.MessageToJson(d, indent=None, sort_keys=True)
        key = route_key(d.name)
        result = await self._db(self.store.record_batch, key, fp, declaration, request.batch_id, pairs, counters)
        state = await self.state_of(key, without_inputs=True, write=True)
        return routes_pb2.RecordRoutePairsResponse(stored=result.stored, duplicates=result.duplicates, state=state)

    # -- GetRouteState / ListRoutes -------------------------------------------------------------------
    async def state(self, name: str, without_inputs: bool = False) -> routes_pb2.RouteState:
        raise_violations([("name", p)] if (p := name_problem(name)) else [])
        return await self.state_of(route_key(name), without_inputs)

    async def listed(self) -> list[routes_pb2.RouteState]:
        states = []
        for key in await self._db(self.store.routes):
            state = await self.state_of(key, without_inputs=True)
            del state.agreement_history[:]
            del state.disagreements[:]
            states.append(state)
        return states

    async def state_of(self, key: str, without_inputs: bool, write: bool = False) -> routes_pb2.RouteState:
        found = await self._db(self.store.declaration, key)
        if found is None:
            raise NotFound(f"no route {quote(key.removeprefix(ROUTE_PREFIX))} has recorded pairs",
                           resource_type="route", resource_name=key.removeprefix(ROUTE_PREFIX))
        epoch, declaration_json = found
        declaration = json_format.Parse(declaration_json, routes_pb2.RouteDeclaration())
        cached = await self._computed(key, epoch, declaration, write)
        state = routes_pb2.RouteState()
        state.CopyFrom(cached.state)
        state.route.CopyFrom(declaration)
        state.epoch = epoch
        await self._decide(key, epoch, declaration, cached, state)
        counters = await self._db(self.store.counters, key)
        state.duplicates = counters.pop("duplicates", 0)
        c = state.counters
        c.requests, c.mirrored = counters.get("requests", 0), counters.get("mirrored", 0)
        c.answered_by_candidate, c.records_lost = counters.get("answered_by_candidate", 0), counters.get(
            "records_lost", 0)
        for name, n in counters.items():
            if name.startswith("dropped."):
                c.dropped[name.removeprefix("dropped.")] = n
        if not without_inputs and declaration.keep_inputs and state.disagreements:
            inputs = await self._db(self.store.kept_inputs, key, [x.request_id for x in state.disagreements])
            for x in state.disagreements:
                x.input = inputs.get(x.request_id, b"")
        return state

    async def _computed(self, key: str, epoch: int, declaration: routes_pb2.RouteDeclaration,
                        write: bool = False) -> _Cached:
        """The cached state of the route's epoch, recomputed only when its pairs or labels changed (and, for a
        write, only at the write duty cycle: WRITE_DUTY)."""
        async with self._locks.setdefault(key, asyncio.Lock()):
            version = await self._db(self.store.version, key, epoch)
            cached = self._cache.get(key)
            if cached is not None and cached.epoch == epoch and cached.version == version:
                return cached
            if write and cached is not None and cached.fresh_enough_for_a_write(epoch):
                return cached
            started = time.monotonic()
            pairs: list[StoredPair] = []
            if cached is not None and cached.epoch == epoch:  # only the new pairs, if none committed out of order
                new = await self._db(self.store.pairs, key, epoch, cached.version[1])
                if len(cached.pairs) + len(new) == version[0]:
                    pairs = cached.pairs + new
            if len(pairs) != version[0]:
                pairs = await self._db(self.store.pairs, key, epoch)
            labels = cached.labels if cached is not None and cached.version[2:] == version[2:] else \
                await self._db(self.store.labels, key)
            state, bounds = await asyncio.get_running_loop().run_in_executor(
                self._pool, compute, declaration, pairs, labels)
            version = (len(pairs), pairs[-1].id if pairs else 0, *version[2:])
            now = time.monotonic()
            self._cache[key] = _Cached(epoch, version, pairs, labels, state, bounds, now, now - started)
            return self._cache[key]

    async def _decide(self, key: str, epoch: int, declaration: routes_pb2.RouteDeclaration, cached: _Cached,
                      state: routes_pb2.RouteState) -> None:
        """Record each bound's first decision of the epoch and a canary's first rollback; show both."""
        decided = await self._db(self.store.decisions, key, epoch)
        rollback = await self._db(self.store.rollback, key, epoch)
        wrote = False
        for r in cached.bounds:
            if r.state != rs.UNDECIDED and r.bound.text() not in decided:
                await self._db(self.store.record_decision, key, epoch, r.bound.text(), r.state, cached.state.pairs,
                               _interval_json(r.interval))
                wrote = True
            if (declaration.mode == "canary" and r.state == rs.VIOLATED and r.bound.metric in ROLLBACK_METRICS
                    and rollback is None):
                reason = (f"{r.bound.text()} violated after {cached.state.pairs} pairs: interval "
                          f"[{r.interval.lower:.4g}, {r.interval.upper:.4g}]")
                await self._db(self.store.record_rollback, key, epoch, reason)
                rollback = await self._db(self.store.rollback, key, epoch)
        if wrote:
            decided = await self._db(self.store.decisions, key, epoch)
        for r in cached.bounds:
            b = state.decisions.add(bound=routes_pb2.RouteBound(metric=r.bound.metric, op=r.bound.op,
                                                                  value=r.bound.value),
                                    state=_STATES[r.state], interval=_interval(r.interval))
            if (record := decided.get(r.bound.text())) is not None:
                kind, at, pairs, interval = record
                lower, upper, estimate, n, method = json.loads(interval)
                b.decided_at, b.decided_after, b.decided_state = iso(at), pairs, _STATES[kind]
                b.interval_at_decision.CopyFrom(routes_pb2.SequenceInterval(
                    lower=lower, upper=upper, estimate=estimate, n=n, method=method))
        if rollback is not None:
            state.rolled_back, state.rollback_reason, state.rolled_back_at = True, rollback[0], iso(rollback[1])

    # -- RecordFeedback -------------------------------------------------------------------------------
    async def feedback(self, request: routes_pb2.RecordFeedbackRequest) -> routes_pb2.RecordFeedbackResponse:
        items = checked_feedback(request)  # every field checked before any lookup
        key = route_key(request.route) if request.route else ""
        if key and await self._db(self.store.declaration, key) is None:
            raise NotFound(f"route: no route {quote(request.route)} has recorded pairs", resource_type="route",
                           resource_name=request.route)
        found = await self._db(self.store.find_requests, [rid for rid, _, _ in items], key)
        by_route: dict[str, list[tuple[str, int, str]]] = {}
        unknown: list[str] = []
        problems = []
        label_sets: dict[str, set[str]] = {}
        for i, (rid, row, label) in enumerate(items):
            routes = found.get(rid, {})
            if len(routes) > 1:
                raise FailedPrecondition(f"items[{i}].request_id: {quote(rid)} was recorded by several routes "
                                         f"({', '.join(sorted(r.removeprefix(ROUTE_PREFIX) for r in routes))}); "
                                         "name the route")
            if not routes or row >= next(iter(routes.values())):
                unknown.append(rid)
                continue
            route = next(iter(routes))
            if route not in label_sets:
                declared = await self._db(self.store.declaration, route)
                label_sets[route] = set(json.loads(declared[1]).get("labels", [])) if declared else set()
                if not label_sets[route]:
                    raise FailedPrecondition(f"route {quote(route.removeprefix(ROUTE_PREFIX))} declares no labels "
                                             "(it compares latency and status only): feedback needs a classifier")
            if label not in label_sets[route]:
                problems.append((f"items[{i}].label", f"{quote(label)} is not one of the route's labels"))
            by_route.setdefault(route, []).append((rid, row, label))
        raise_violations(problems)
        stored = same = 0
        conflicts: list[str] = []
        for route, route_items in sorted(by_route.items()):
            s, d, c = await self._db(self.store.record_feedback, route, route_items)
            stored, same, conflicts = stored + s, same + d, conflicts + c
        return routes_pb2.RecordFeedbackResponse(stored=stored, duplicates=same,
                                                 unknown_request_ids=list(dict.fromkeys(unknown)),
                                                 conflicting_request_ids=list(dict.fromkeys(conflicts)))
