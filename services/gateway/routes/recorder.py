"""The way pairs reach the ranker: buffered (bounded; overflow counted as records lost), sent at most once a
second per route with ``RecordRoutePairs``, a failed batch retried with the same ``batch_id`` (the ranker stores
it once), counters sent as increments. Every answer carries the route's state, read by every replica: the
metrics and a canary's rollback come from there (and from a ``GetRouteState`` poll when nothing was sent)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from versus.ranker.v1 import routes_pb2

from services.gateway.downstream import DownstreamError

log = logging.getLogger(__name__)

MAX_BUFFER = 50_000
MAX_BATCH = 10_000  # the ranker's limit per call
FLUSH_INTERVAL_S = 1.0
POLL_INTERVAL_S = 2.0
CALL_TIMEOUT_S = 10.0
#: Answers that retrying the same batch will not change: the batch is given up (and counted as lost).
PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED}

RankerCall = Callable[[str, object, float], Awaitable[object]]


class Counters:
    """A replica's counts of one route: totals since start and the increments not yet sent."""

    def __init__(self) -> None:
        self.total = routes_pb2.RouteCounters()
        self.delta = routes_pb2.RouteCounters()

    def add(self, name: str, n: int = 1) -> None:
        for c in (self.total, self.delta):
            setattr(c, name, getattr(c, name) + n)

    def drop(self, reason: str) -> None:
        for c in (self.total, self.delta):
            c.dropped[reason] = c.dropped.get(reason, 0) + 1

    def take(self) -> routes_pb2.RouteCounters:
        delta, self.delta = self.delta, routes_pb2.RouteCounters()
        return delta

    def empty(self) -> bool:
        return self.delta.ByteSize() == 0


class Recorder:
    """One route's pairs and counters on their way to the ranker."""

    def __init__(self, route: str, replica: str, declaration: Callable[[], routes_pb2.RouteDeclaration],
                 call: RankerCall, on_state: Callable[[routes_pb2.RouteState], None],
                 on_lost: Callable[[int], None], max_buffer: int = MAX_BUFFER) -> None:
        self.route = route
        self.replica = replica
        self.declaration = declaration
        self.call = call
        self.on_state = on_state
        self.on_lost = on_lost
        self.max_buffer = max_buffer
        self.buffer: collections.deque[routes_pb2.RoutePair] = collections.deque()
        self.counters = Counters()
        self.batch: routes_pb2.RecordRoutePairsRequest | None = None  # sent, not yet acknowledged
        self.sequence = 0
        self.state: routes_pb2.RouteState | None = None
        self.state_error = ""
        self.last_state_at = 0.0
        self._wake = asyncio.Event()

    # -- from the request path (never blocks) ---------------------------------------------------
    def add(self, pair: routes_pb2.RoutePair) -> None:
        if len(self.buffer) >= self.max_buffer:
            self.lost(1)
            return
        self.buffer.append(pair)

    def lost(self, n: int) -> None:
        self.counters.add("records_lost", n)
        self.on_lost(n)

    @property
    def pending(self) -> int:
        return len(self.buffer) + (len(self.batch.pairs) if self.batch is not None else 0)

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Flush once a second; poll the state when nothing was sent for POLL_INTERVAL_S."""
        while True:
            started = time.monotonic()
            await self.flush()
            if time.monotonic() - self.last_state_at >= POLL_INTERVAL_S:
                await self.poll()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, FLUSH_INTERVAL_S - (time.monotonic() - started)))
            except TimeoutError:
                pass
            self._wake.clear()

    async def flush(self, timeout_s: float = CALL_TIMEOUT_S) -> bool:
        """Send the pending batch (or a new one); True when there was nothing to send or it was stored."""
        if self.batch is None:
            if not self.buffer and self.counters.empty():
                return True
            take = min(len(self.buffer), MAX_BATCH)
            self.sequence += 1
            self.batch = routes_pb2.RecordRoutePairsRequest(
                route=self.declaration(), pairs=[self.buffer.popleft() for _ in range(take)],
                counters=self.counters.take(), batch_id=f"{self.replica}/{self.route}/{self.sequence}")
        try:
            reply = await self.call("RecordRoutePairs", self.batch, timeout_s)
        except DownstreamError as exc:
            self.state_error = exc.details.describe()[:300]
            if exc.details.code in PERMANENT:
                log.error("route batch refused by the ranker; dropped",
                          extra={"route": self.route, "pairs": len(self.batch.pairs), "error": self.state_error})
                self.lost(len(self.batch.pairs))
                self.batch = None
            else:
                log.warning("route batch not stored; retrying with the same batch id",
                            extra={"route": self.route, "batch_id": self.batch.batch_id, "error": self.state_error})
            return False
        self.batch = None
        self._state(reply.state)  # type: ignore[attr-defined]
        return True

    async def poll(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        request = routes_pb2.GetRouteStateRequest(name=self.route, without_inputs=True)
        try:
            reply = await self.call("GetRouteState", request, timeout_s)
        except DownstreamError as exc:
            if exc.details.code != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: no pairs anywhere yet
                self.state_error = exc.details.describe()[:300]
            self.last_state_at = time.monotonic()
            return
        self._state(reply.state)  # type: ignore[attr-defined]

    def _state(self, state: routes_pb2.RouteState) -> None:
        self.state, self.state_error, self.last_state_at = state, "", time.monotonic()
        self.on_state(state)

    async def close(self, timeout_s: float = 2.0) -> None:
        """One last attempt to deliver what is buffered (the pairs still buffered after it are lost)."""
        deadline = time.monotonic() + timeout_s
        while (self.buffer or self.batch is not None or not self.counters.empty()) and time.monotonic() < deadline:
            if not await self.flush(max(0.05, deadline - time.monotonic())):
                break
        if self.pending:
            log.warning("route pairs not delivered at shutdown", extra={"route": self.route, "pairs": self.pending})
