"""Dynamic micro-batching with admission control, transport-free (no gRPC here).

Callers ``submit`` a group of items (one request's images) and await their results. A single
worker coroutine takes up to ``max_batch_size`` waiting items and runs them: a blocking batch function on
the model's executor (one thread per device), so model code never runs on the event loop; an async one
(an engine that awaits a remote server, or hands its own work to the device thread) is awaited. At most
``concurrency`` batches run at once (1 for a device: calls never overlap).

Batching policy: when the device is idle the worker starts at once with whatever is waiting, so a
lone caller pays no batching delay; while it is busy, new items pile up and form the next batch.
``max_wait_ms`` > 0 additionally holds a batch that is not yet full for up to that long after its
first item arrived (useful on GPUs, where a bigger batch is nearly free).

Admission: the queue holds at most ``max_queue`` items; a group that does not fit is refused whole
with ResourceExhausted. Items whose caller went away (cancelled) or whose deadline passed are
dropped before compute.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.common import errors, tracing
from services.common.admission import QueueFull, ServiceTime
from services.common.metrics import Metrics

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class ItemStats:
    """Where one item's time went, in seconds."""

    queue_s: float
    compute_s: float
    batch_size: int
    batch_id: int


@dataclass
class _Item(Generic[In]):
    payload: In
    future: asyncio.Future[tuple[Any, ItemStats]]
    enqueued: float
    deadline: float | None  # time.monotonic() value, or None
    parent: tracing.Captured | None = None  # the caller's trace context (None while tracing is off)


@dataclass
class BatcherStats:
    """Counters for tests and logs."""

    batches: int = 0
    items: int = 0
    dropped_cancelled: int = 0
    dropped_deadline: int = 0


class MicroBatcher(Generic[In, Out]):
    """Batches items across concurrent requests and runs ``run_batch`` on them.

    ``run_batch`` receives the payloads of one batch and must return exactly one output per input; an
    output that is an exception fails only its own item (e.g. an image that turned out to be corrupt). A
    blocking ``run_batch`` runs on ``executor``; a coroutine function is awaited (``executor`` unused).
    """

    def __init__(
        self,
        run_batch: Callable[[list[In]], Sequence[Out]] | Callable[[list[In]], Awaitable[Sequence[Out]]],
        executor: Executor | None,
        *,
        model: str,
        max_batch_size: int,
        max_queue: int,
        max_wait_ms: float = 0.0,
        metrics: Metrics | None = None,
        service_time: ServiceTime | None = None,
        concurrency: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or concurrency < 1:
            raise errors.ConfigError("max_batch_size, max_queue and concurrency must be >= 1 and max_wait_ms >= 0")
        self._run_batch = run_batch
        self._is_async = inspect.iscoroutinefunction(run_batch)
        if executor is None and not self._is_async:
            raise errors.ConfigError("a blocking run_batch needs an executor")
        self.concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._executor = executor
        self._model = model
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._max_wait_s = max_wait_ms / 1000.0
        self._metrics = metrics
        self._queue: collections.deque[_Item[In]] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        #: Running estimate of compute time per item, behind the retry hints.
        self.service_time = service_time or ServiceTime(initial_s=0.05)
        self.stats = BatcherStats()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self._model}")

    async def close(self) -> None:
        """Fail whatever still waits with Unavailable and stop the worker."""
        self._closed = True
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(errors.Unavailable("server is shutting down"))
        for task in [self._worker, *self._running]:
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._set_depth()

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a batch)."""
        return len(self._queue)

    # -- submission ---------------------------------------------------------------------------
    async def submit(self, payloads: Sequence[In], *, timeout_s: float | None = None) -> list[tuple[Out, ItemStats]]:
        """Queue ``payloads`` as one group and wait for all their outputs, in order.

        Raises ResourceExhausted when the group does not fit, DeadlineExceeded when ``timeout_s``
        passes first. Cancelling the awaiting task drops the group's items that have not started.
        """
        if self._closed or self._wakeup is None:
            raise errors.Unavailable("model queue is not running")
        if not payloads:
            return []
        if len(payloads) > self.max_queue:
            raise errors.InvalidArgument("images", f"{len(payloads)} items exceed the queue capacity {self.max_queue}")
        if len(self._queue) + len(payloads) > self.max_queue:
            if self._metrics:
                self._metrics.rejected.labels(self._model, "queue_full").inc(len(payloads))
            retry = self.service_time.retry_after(len(self._queue))
            raise QueueFull(
                f"queue full ({len(self._queue)}/{self.max_queue} items waiting); retry after {retry:.2f}s",
                retry_after_s=retry,
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = now + timeout_s if timeout_s is not None else None
        parent = tracing.capture()
        items = [_Item(p, loop.create_future(), now, deadline, parent) for p in payloads]
        self._queue.extend(items)
        self._set_depth()
        self._wakeup.set()
        try:
            return await asyncio.gather(*(i.future for i in items))
        except BaseException:
            for item in items:  # the worker skips cancelled items; others' results are discarded
                item.future.cancel()
            raise

    # -- worker -------------------------------------------------------------------------------
    async def _work(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        batch_id = 0
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                # a free slot first: while every slot is busy, new items pile up and form the next batch
                await self._slots.acquire()
                await self._hold_for_batch()
                batch = self._take_batch()
                if not batch:
                    self._slots.release()
                    continue
                batch_id += 1
                task = asyncio.get_running_loop().create_task(self._run(batch, batch_id))
                self._running.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        assert self._slots is not None
        self._slots.release()

    async def _hold_for_batch(self) -> None:
        """With max_wait_ms > 0, wait for the batch to fill or the oldest item's wait to expire."""
        if self._max_wait_s <= 0:
            return
        assert self._wakeup is not None
        while len(self._queue) < self.max_batch_size:
            remaining = self._queue[0].enqueued + self._max_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
            if not self._queue:
                return

    def _take_batch(self) -> list[_Item[In]]:
        batch: list[_Item[In]] = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if item.future.done():  # caller cancelled or went away
                self.stats.dropped_cancelled += 1
                self._count_drop("cancelled")
                continue
            if item.deadline is not None and now >= item.deadline:
                self.stats.dropped_deadline += 1
                self._count_drop("deadline")
                item.future.set_exception(errors.DeadlineExceeded("deadline passed while queued"))
                continue
            batch.append(item)
        self._set_depth()
        return batch

    async def _run(self, batch: list[_Item[In]], batch_id: int) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        parents = _trace_queue_waits(batch, started)
        try:
            # The batch's span belongs to its first caller's trace and links to the other callers'; the
            # model code runs inside it (copied context), so its decode/forward spans nest under it.
            with tracing.span("batch", parents[0] if parents else None, parents[1:], model=self._model,
                              batch_size=len(batch), batch_id=batch_id):
                payloads = [i.payload for i in batch]
                if self._is_async:
                    outputs = await self._run_batch(payloads)  # type: ignore[misc]
                else:
                    outputs = await loop.run_in_executor(self._executor, contextvars.copy_context().run,
                                                         self._run_batch, payloads)
            if len(outputs) != len(batch):
                raise errors.InternalError(f"model returned {len(outputs)} outputs for {len(batch)} inputs")
        except asyncio.CancelledError:  # closing: the batch's callers are told, not left waiting
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(errors.Unavailable("server is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - the batch's callers receive the error
            if not isinstance(exc, errors.VersusError):
                log.error("batch failed", exc_info=exc, extra={"model": self._model, "batch_size": len(batch)})
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self._deliver(batch, outputs, started, batch_id)

    def _deliver(self, batch: list[_Item[In]], outputs: Sequence[Out], started: float, batch_id: int) -> None:
        """Record the batch and hand each caller its own output (an exception output fails only its item)."""
        compute_s = time.monotonic() - started
        self.service_time.observe(compute_s, len(batch))
        self.stats.batches += 1
        self.stats.items += len(batch)
        if self._metrics:
            m = self._metrics
            m.compute_seconds.labels(self._model).observe(compute_s)
            m.batch_size.labels(self._model).observe(len(batch))
            m.items.labels(self._model).inc(len(batch))
        for item, output in zip(batch, outputs, strict=True):
            queue_s = started - item.enqueued
            if self._metrics:
                self._metrics.queue_seconds.labels(self._model).observe(queue_s)
            if item.future.done():
                continue
            if isinstance(output, BaseException):
                item.future.set_exception(output)
            else:
                item.future.set_result((output, ItemStats(queue_s, compute_s, len(batch), batch_id)))

    def _set_depth(self) -> None:
        if self._metrics:
            self._metrics.queue_depth.labels(self._model).set(len(self._queue))

    def _count_drop(self, reason: str) -> None:
        if self._metrics:
            self._metrics.rejected.labels(self._model, reason).inc()


def _trace_queue_waits(batch: Sequence[_Item[Any]], started: float) -> list[tracing.Captured]:
    """One "queue wait" span per caller in the batch (from its first item's arrival); their contexts."""
    if not tracing.enabled():
        return []
    first: dict[int, _Item[Any]] = {}
    for item in batch:
        if item.parent is not None:
            first.setdefault(id(item.parent), item)
    end = tracing.wall_ns(started)
    for item in first.values():
        tracing.record("queue wait", tracing.wall_ns(item.enqueued), end, item.parent, items_in_batch=len(batch))
    return [item.parent for item in first.values() if item.parent is not None]
