"""One route at work: the request path (answer from the primary, or the candidate for a canary's share) and the
mirror path beside it (a bounded queue served by a few workers, each mirror with its own deadline, a child span of
the request's trace, never retried, never in the way of the reply).

A mirrored request becomes a :class:`~versus.ranker.v1.routes_pb2.RoutePair` once the other side answered: both
statuses and latencies, and per batch row both top-1 labels and their top-5 overlap (:mod:`.pairing`). A mirror
the other side never answered (queue full, deadline, unavailable, shutdown) is a drop, counted by reason."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass

from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor
from versus.ranker.v1 import routes_pb2

from services.common import tracing
from services.gateway.routes import pairing, wire
from services.gateway.routes.metrics import RouteMetrics
from services.gateway.routes.recorder import Counters, Recorder
from services.gateway.routes.spec import RouteSpec
from services.gateway.routes.upstream import Outcome, Upstream

log = logging.getLogger(__name__)

#: Statuses of a mirror that mean it was never answered (a drop), not an answer with an error status.
DROPS = {"DEADLINE_EXCEEDED": "deadline", "UNAVAILABLE": "unavailable", "CANCELLED": "shutdown"}
MAX_KEPT_INPUT = 1 << 20
#: Bytes of requests waiting for their mirror, beyond which a mirror is dropped as "queue_full" (the queue is
#: bounded in requests too: 256 requests of 64 MiB would otherwise hold 16 GiB).
MAX_QUEUED_BYTES = 256 << 20


def share_point(route: str, purpose: str, request_id: str) -> float:
    """A request's fixed point in [0, 1) for ``purpose`` (deterministic: a replayed id is routed the same way)."""
    digest = hashlib.sha256(f"{route}\x00{purpose}\x00{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass
class Job:
    """A mirror waiting for the other side: the client's bytes and the answering side's outcome."""

    raw: bytes
    request_id: str
    answered_by: str  # "primary" or "candidate"
    answer: Outcome
    recorded_at: float
    parent: tracing.Captured | None


class Route:
    """A declared route with its two upstreams, mirror workers and recorder."""

    def __init__(self, spec: RouteSpec, metrics: RouteMetrics, recorder: Recorder,
                 sides: tuple[pairing.Side, pairing.Side] = (pairing.Side(), pairing.Side())) -> None:
        self.spec = spec
        self.m = metrics
        self.recorder = recorder
        self.counters: Counters = recorder.counters
        self.sides = sides  # what each side's replies mean (labels), set once described
        self.primary = Upstream(spec.primary)
        self.candidate = Upstream(spec.candidate)
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=spec.queue)
        self.in_flight = 0
        self.queued_bytes = 0
        self.rolled_back = False
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._workers = [asyncio.ensure_future(self._worker()) for _ in range(self.spec.mirror_concurrency)]

    async def close(self) -> None:
        """Stop mirroring: queued and in-flight mirrors are dropped as "shutdown"."""
        self._closing = True
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self.queue.empty():
            self.queue.get_nowait()
            self._drop("shutdown")
        self._pending_gauge()
        await asyncio.gather(self.primary.close(), self.candidate.close())

    # -- the request path --------------------------------------------------------------------------
    @property
    def split(self) -> float:
        """The candidate's share of answers now: 0 for a shadow route and after a rollback."""
        return 0.0 if not self.spec.canary or self.rolled_back else self.spec.share

    def share(self) -> float:
        return self.split if self.spec.canary else self.spec.share

    async def infer(self, raw: bytes, request_id: str, timeout_s: float, call_id: str = "") -> Outcome:
        """Answer one request; queue its mirror when it is one (without waiting for anything)."""
        by_candidate = self.split > 0 and share_point(self.spec.name, "split", request_id) < self.split
        mirror = by_candidate or (not self.spec.canary and share_point(self.spec.name, "mirror", request_id)
                                  < self.spec.share)
        answered_by = "candidate" if by_candidate else "primary"
        upstream = self.candidate if by_candidate else self.primary
        outcome = await upstream.infer(raw, timeout_s, call_id)
        self.counters.add("requests")
        self.m.requests.labels(self.spec.name, answered_by).inc()
        if by_candidate:
            self.counters.add("answered_by_candidate")
        if mirror and not self._closing:
            self._enqueue(Job(raw, request_id, answered_by, outcome, time.time(), tracing.capture()))
        return outcome

    def _enqueue(self, job: Job) -> None:
        self.counters.add("mirrored")
        self.m.mirrored.labels(self.spec.name).inc()
        if self.queued_bytes + len(job.raw) > MAX_QUEUED_BYTES:
            self._drop("queue_full")
        else:
            try:
                self.queue.put_nowait(job)
                self.queued_bytes += len(job.raw)
            except asyncio.QueueFull:
                self._drop("queue_full")
        self._pending_gauge()

    # -- the mirror path ---------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            self.queued_bytes -= len(job.raw)
            self.in_flight += 1
            try:
                await self._mirror(job)
            except asyncio.CancelledError:
                self._drop("shutdown")
                raise
            except Exception:  # a bug here must not stop the worker: the mirror is lost, the route goes on
                log.exception("mirror failed", extra={"route": self.spec.name})
                self._drop("error")
            finally:
                self.in_flight -= 1
                self._pending_gauge()

    async def _mirror(self, job: Job) -> None:
        other = self.primary if job.answered_by == "candidate" else self.candidate
        with tracing.span("route.mirror", parent=job.parent, route=self.spec.name, request_id=job.request_id,
                          side="primary" if other is self.primary else "candidate"):
            outcome = await other.infer(job.raw, self.spec.mirror_timeout_s)
        reason = DROPS.get(outcome.status)
        if reason:
            self._drop(reason)
            return
        self.recorder.add(self.pair(job, outcome))

    def pair(self, job: Job, mirrored: Outcome) -> routes_pb2.RoutePair:
        """The pair of one request: the answer and the mirror, put on the primary and candidate sides."""
        primary, candidate = (job.answer, mirrored) if job.answered_by == "primary" else (mirrored, job.answer)
        pair = routes_pb2.RoutePair(
            request_id=job.request_id, recorded_at=job.recorded_at, primary_status=primary.status,
            candidate_status=candidate.status, primary_latency_s=primary.latency_s,
            candidate_latency_s=candidate.latency_s, input_digest=wire.input_digest(job.raw),
            answered_by=job.answered_by)
        if primary.ok and candidate.ok:
            p, c = pairing.decode(primary.reply), pairing.decode(candidate.reply)
            if p is not None and c is not None:
                pair.rows.extend(pairing.pair_rows(p, c, *self.sides))
        if (self.spec.keep_inputs and len(pair.rows) == 1
                and pair.rows[0].primary_label != pair.rows[0].candidate_label):
            pair.kept_input = kept_input(job.raw)
        return pair

    def _drop(self, reason: str) -> None:
        self.counters.drop(reason)
        self.m.dropped.labels(self.spec.name, reason).inc()

    def _pending_gauge(self) -> None:
        self.m.pending.labels(self.spec.name).set(self.pending)

    @property
    def pending(self) -> int:
        return self.queue.qsize() + self.in_flight


def kept_input(raw: bytes) -> bytes:
    """The encoded image of a batch of one (a BYTES input's single element, or the raw tensor), at most 1 MiB;
    b"" when the request holds something else."""
    with contextlib.suppress(Exception):  # hostile bytes: nothing is kept
        request = service_pb2.ModelInferRequest.FromString(raw)
        if len(request.inputs) == 1 and request.raw_input_contents:
            data = request.raw_input_contents[0]
            if request.inputs[0].datatype == "BYTES":
                items = deserialize_bytes_tensor(data)
                data = bytes(items[0]) if len(items) == 1 else b""
            return data if len(data) <= MAX_KEPT_INPUT else b""
        if len(request.inputs) == 1 and len(request.inputs[0].contents.bytes_contents) == 1:
            data = request.inputs[0].contents.bytes_contents[0]
            return data if len(data) <= MAX_KEPT_INPUT else b""
    return b""
