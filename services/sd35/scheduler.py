"""Per-variant ordered, bounded queues in front of the one device thread (no gRPC).

One thread per device runs every pipeline on it (so a pipeline never runs two calls at once and
variants never compete for one GPU). Each variant's requests wait in an ordered deque, bounded by
``max_queue``: beyond it the request is refused at once with QUEUE_FULL and a retry hint — the
estimated time for the work already on the device (megapixel-steps ahead × the recent seconds per
megapixel-step of each variant, a :class:`~services.common.admission.ServiceTime`). A waiting request
sees ``Queued(position)`` whenever its position changes; one cancelled while waiting never starts; a
running one stops at the next step, because the step hook raises when the caller's cancel flag is set
or its deadline has passed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from services.common import tracing
from services.common.admission import QueueFull, ServiceTime
from services.common.errors import Unavailable
from services.sd35.engine import GenerationOutput, StepHooks, encode_image
from services.sd35.errors import GenerationCancelled, GenerationDeadline
from services.sd35.metrics import Sd35Metrics
from services.sd35.requests import FORMATS, GenerationParams, Preview, Progress, Queued, Result
from services.sd35.variants import VariantSpec

log = logging.getLogger(__name__)

#: Progress events are coalesced to at most one per this many ms (plus the first and the last step):
#: with steps of a few ms (tiny models, Turbo on a fast GPU) a message per step costs the event loop and
#: the client more than it tells them. Cancellation and deadlines are still checked after every step.
PROGRESS_INTERVAL_MS = 50.0
#: A cancel that arrives this close to the deadline is the deadline's doing (gRPC cancels the call
#: when the deadline passes; the two clocks differ by microseconds).
DEADLINE_SLACK_S = 0.05


class Runner(Protocol):
    """What the scheduler needs of a pipeline (``engine.Sd35Runner``; tests use small fakes)."""

    spec: VariantSpec

    def generate(self, params: GenerationParams, hooks: StepHooks) -> GenerationOutput:
        """Runs on the device thread."""


@dataclass
class Job:
    """One Generate request from admission to its last event."""

    variant: str
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    deadline: float | None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    position: int = -1
    steps_done: int = 0
    #: The caller's trace context (None while tracing is off): the device and encode threads' spans join it.
    parent: tracing.Captured | None = field(default_factory=tracing.capture)

    def emit(self, event: object) -> None:
        """Thread-safe: deliver an event (or a final exception) to the waiting caller."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def remaining_units(self) -> float:
        return self.params.work_units * (1 - self.steps_done / self.params.steps)

    def check_stop(self, step: int, total: int) -> None:
        """Raise to end the denoising loop when the caller went away or the deadline passed."""
        now = time.monotonic()
        expired = self.deadline is not None and now >= self.deadline - DEADLINE_SLACK_S
        if self.cancel.is_set():
            if expired:
                raise GenerationDeadline(f"deadline passed after step {step} of {total}")
            raise GenerationCancelled(f"cancelled by the caller after step {step} of {total}")
        if self.deadline is not None and now > self.deadline:
            raise GenerationDeadline(f"deadline passed after step {step} of {total}")


class VariantQueue:
    """The ordered wait queue of one variant and the job it is running."""

    def __init__(self, runner: Runner, service_time: ServiceTime) -> None:
        self.runner = runner
        self.name = runner.spec.name
        self.service_time = service_time
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: Job | None = None

    def pending_units(self) -> float:
        """Megapixel-steps still to run: the waiting jobs and the rest of the running one."""
        running = self.running.remaining_units() if self.running is not None else 0.0
        return running + sum(job.params.work_units for job in self.waiting)


class Scheduler:
    """The variants' queues on one device executor, plus the pool that encodes results."""

    def __init__(self, metrics: Sd35Metrics, device: Executor, encode_pool: Executor, max_queue: int,
                 png_level: int = 1) -> None:
        self.metrics = metrics
        self.device = device
        self.encode_pool = encode_pool
        self.max_queue = max_queue
        self.png_level = png_level
        self.queues: dict[str, VariantQueue] = {}

    def add(self, runner: Runner, seconds_per_unit: float) -> None:
        """Serve ``runner``'s variant; ``seconds_per_unit`` seeds the wait estimate (from the warm-up)."""
        self.queues[runner.spec.name] = VariantQueue(runner, ServiceTime(seconds_per_unit))

    def wait_estimate_s(self) -> float:
        """Seconds until the work now on the device (every variant's) has run."""
        return sum(q.service_time.retry_after(q.pending_units()) for q in self.queues.values() if q.pending_units())

    def submit(self, job: Job) -> None:
        """Queue ``job`` or refuse it at once with QUEUE_FULL and a retry hint."""
        queue = self.queues[job.variant]
        self._drop_cancelled(queue)
        if len(queue.waiting) >= self.max_queue:
            self.metrics.rejected.labels(queue.name, "queue_full").inc()
            retry = max(0.01, self.wait_estimate_s())
            raise QueueFull(f"{len(queue.waiting)} requests already wait for {queue.name}; retry after {retry:.2f}s",
                            retry_after_s=retry)
        queue.waiting.append(job)
        self._update(queue)
        self._kick(queue)

    def close(self) -> None:
        """Refuse everything waiting with UNAVAILABLE and stop the running jobs at their next step."""
        for queue in self.queues.values():
            for job in queue.waiting:
                job.emit(Unavailable("server is shutting down"))
            queue.waiting.clear()
            if queue.running is not None:
                queue.running.cancel.set()
            self._update(queue)

    # -- queue bookkeeping (event loop) ------------------------------------------------------------
    def _drop_cancelled(self, queue: VariantQueue) -> None:
        for job in [j for j in queue.waiting if j.cancel.is_set()]:
            queue.waiting.remove(job)
            self.metrics.cancellations.labels(queue.name, "cancelled_in_queue").inc()

    def _update(self, queue: VariantQueue) -> None:
        for position, job in enumerate(queue.waiting):
            if job.position != position:
                job.position = position
                job.emit(Queued(position))
        self.metrics.queue_depth.labels(queue.name).set(len(queue.waiting))
        self.metrics.work_in_flight.labels(queue.name).set(len(queue.waiting) + (queue.running is not None))

    def _kick(self, queue: VariantQueue) -> None:
        self._drop_cancelled(queue)
        if queue.running is None and queue.waiting:
            job = queue.running = queue.waiting.popleft()
            future = job.loop.run_in_executor(self.device, self._run, queue, job)
            future.add_done_callback(lambda _: self._finished(queue))
        self._update(queue)

    def _finished(self, queue: VariantQueue) -> None:
        queue.running = None
        self._kick(queue)

    # -- device thread ---------------------------------------------------------------------------------
    def _hooks(self, queue: VariantQueue, job: Job, span: tracing.Span | None) -> StepHooks:
        last_step = [time.perf_counter()]
        last_sent_ms = [-PROGRESS_INTERVAL_MS]

        def on_step(step: int, total: int, elapsed_ms: float) -> None:
            now = time.perf_counter()
            self.metrics.step_seconds.labels(queue.name).observe(now - last_step[0])
            last_step[0] = now
            job.steps_done = step
            tracing.event(span, "step", step=step, total=total)
            if step == total or elapsed_ms - last_sent_ms[0] >= PROGRESS_INTERVAL_MS:
                last_sent_ms[0] = elapsed_ms
                job.emit(Progress(step, total, elapsed_ms))
            job.check_stop(step, total)

        return StepHooks(on_step, lambda step, images: job.emit(Preview(step, images)))

    def _run(self, queue: VariantQueue, job: Job) -> None:
        """Device thread: run the job; hand the images to the encode pool (so the next job can start
        denoising while they are encoded), which delivers the Result. Errors are the last event."""
        queue_ms = (time.monotonic() - job.enqueued) * 1e3
        self.metrics.queue_seconds.labels(queue.name).observe(queue_ms / 1e3)
        tracing.record("queue wait", tracing.wall_ns(job.enqueued), time.time_ns(), job.parent, variant=queue.name)
        started = time.perf_counter()
        try:
            p = job.params
            with tracing.span("generate", job.parent, variant=queue.name, steps=p.steps, width=p.width,
                              height=p.height, images=p.num_images) as span:
                job.check_stop(0, p.steps)
                out = queue.runner.generate(p, self._hooks(queue, job, span))
                tracing.annotate(span, **out.timings_ms)  # text encoding, denoising, VAE decode
        except (GenerationCancelled, GenerationDeadline) as exc:
            reason = "deadline" if isinstance(exc, GenerationDeadline) else "cancelled"
            self.metrics.cancellations.labels(queue.name, reason).inc()
            job.emit(exc)
            return
        except Exception as exc:  # noqa: BLE001 - delivered to the caller, mapped to a status there
            log.info("generation failed", exc_info=exc, extra={"variant": queue.name})
            job.emit(exc)
            return
        queue.service_time.observe(time.perf_counter() - started, job.params.work_units)
        self.encode_pool.submit(self._deliver, queue.name, job, out, queue_ms, started)

    def _deliver(self, name: str, job: Job, out: GenerationOutput, queue_ms: float, started: float) -> None:
        """Encode pool: encode the images and emit the Result."""
        p = job.params
        try:
            t0 = time.perf_counter()
            with tracing.span("encode", job.parent, format=p.output_format, images=len(out.images)):
                data = [encode_image(im, p.output_format, self.png_level) for im in out.images]
            encode_ms = (time.perf_counter() - t0) * 1e3
        except Exception as exc:  # noqa: BLE001 - delivered to the caller
            log.error("encoding failed", exc_info=exc, extra={"variant": name})
            job.emit(exc)
            return
        total_ms = (time.perf_counter() - started) * 1e3
        self.metrics.generation_seconds.labels(name).observe(total_ms / 1e3)
        self.metrics.images_generated.labels(name).inc(len(data))
        timings = {"queue_ms": queue_ms, **out.timings_ms, "encode_ms": encode_ms, "total_ms": queue_ms + total_ms}
        job.emit(Result(data, FORMATS[p.output_format][1], [p.seed + i for i in range(p.num_images)], job.variant,
                        p.steps, p.guidance, p.width, p.height, timings))
