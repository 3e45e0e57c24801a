"""The SD3.5 data plane: validation, per-variant ordered bounded queues, streaming events,
cancellation, LoRA adapter management (no gRPC).

One thread per device runs every pipeline on it (so a pipeline never runs two calls at once and
variants never compete for one GPU). Each variant's requests wait in an ordered deque
(bounded: RESOURCE_EXHAUSTED beyond it) and see ``Queued(position)`` whenever their position changes;
a cancelled request still waiting never starts; a running one stops at the next step, because the
step hook raises when the caller's cancel flag is set or its deadline has passed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from services.common.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted,
                                    Unavailable)
from services.sd35.config import Sd35Config
from services.sd35.engine import (FORMATS, GenerationOutput, GenerationParams, Sd35Runner, StepHooks, VariantSpec,
                                  encode_image)
from services.sd35.errors import (AdapterNotFound, BadAdapterPath, GenerationCancelled, GenerationDeadline,
                                  VariantNotHosted)
from services.sd35.metrics import Sd35Metrics
from services.torch_runtime import watch_gpu_memory

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_SEED = 2**63 - 1 - 4  # seed + i must stay a valid int64


def variant_specs(config: Sd35Config) -> dict[str, VariantSpec]:
    """Defaults from the model cards; pixel budgets from the config."""
    return {
        "large": VariantSpec("large", 28, 3.5, 0, config.max_pixels_large),
        "large-turbo": VariantSpec("large-turbo", 4, 0.0, 0, config.max_pixels_large),
        "medium": VariantSpec("medium", 40, 4.5, config.min_pixels_medium, config.max_pixels_medium, (7, 8, 9)),
    }


@dataclass(frozen=True)
class Request:
    """A Generate request as the servicer hands it over (unset optionals are None)."""

    prompt: str
    negative_prompt: str = ""
    variant: str = ""
    width: int = 0
    height: int = 0
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    num_images: int = 0
    max_sequence_length: int = 0
    adapters: tuple[tuple[str, float], ...] = ()
    output_format: str = "png"
    preview_every: int = 0


@dataclass(frozen=True)
class Queued:
    position: int


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    elapsed_ms: float


@dataclass(frozen=True)
class Preview:
    step: int
    images: list[bytes]


@dataclass(frozen=True)
class Result:
    images: list[bytes]
    mime_type: str
    seeds: list[int]
    variant: str
    steps: int
    guidance: float
    width: int
    height: int
    timings_ms: dict[str, float]


Event = Queued | Progress | Preview | Result


@dataclass
class Job:
    variant: str
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    deadline: float | None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    position: int = -1
    started: bool = False
    steps_run: int = 0
    outcome: str = "queued"

    def emit(self, event: object) -> None:
        """Thread-safe: deliver an event (or a final exception) to the waiting caller."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class VariantQueue:
    """Ordered, bounded wait queue of one variant, in front of the device thread."""

    def __init__(self, runner: Sd35Runner, max_queue: int, metrics: Sd35Metrics, device_pool: ThreadPoolExecutor,
                 encode_pool: ThreadPoolExecutor, png_level: int = 1) -> None:
        self.runner = runner
        self.max_queue = max_queue
        self.metrics = metrics
        self.encode_pool = encode_pool
        self.png_level = png_level
        # One thread per device, shared by the variants on it: pipelines never run concurrently on one
        # device (they would fight over its memory and, on CPUs, over the cores).
        self.executor = device_pool
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self.history: collections.deque[Job] = collections.deque(maxlen=256)

    def submit(self, job: Job) -> None:
        self._drop_cancelled()
        if len(self.waiting) >= self.max_queue:
            self.metrics.rejected.labels(self.runner.spec.name, "queue_full").inc()
            raise ResourceExhausted(f"{len(self.waiting)} requests already wait for {self.runner.spec.name}; retry later",
                                    retry_after_s=5.0)
        self.waiting.append(job)
        self._update()
        self._kick()

    def _drop_cancelled(self) -> None:
        for job in [j for j in self.waiting if j.cancel.is_set()]:
            self.waiting.remove(job)
            job.outcome = "cancelled-in-queue"
            self.metrics.cancellations.labels(self.runner.spec.name, "cancelled_in_queue").inc()
            self.history.append(job)

    def _update(self) -> None:
        for position, job in enumerate(self.waiting):
            if job.position != position:
                job.position = position
                job.emit(Queued(position))
        self.metrics.queue_depth.labels(self.runner.spec.name).set(len(self.waiting))

    def _kick(self) -> None:
        self._drop_cancelled()
        if self.running is not None or not self.waiting:
            self._update()
            return
        job = self.running = self.waiting.popleft()
        job.started = True
        self._update()
        future = job.loop.run_in_executor(self.executor, self._run, job)
        future.add_done_callback(lambda _: self._finished(job))

    def _finished(self, job: Job) -> None:
        self.running = None
        self.history.append(job)
        self._kick()

    def _run(self, job: Job) -> None:
        """Worker thread: run the job; hand the images to the encode pool (so the next job can start
        denoising while they are encoded), which delivers the Result. Errors are the last event."""
        name = self.runner.spec.name
        queue_ms = (time.monotonic() - job.enqueued) * 1e3
        self.metrics.queue_seconds.labels(name).observe(queue_ms / 1e3)
        last_step = [time.perf_counter()]

        def on_step(step: int, total: int, elapsed_ms: float) -> None:
            now = time.perf_counter()
            self.metrics.step_seconds.labels(name).observe(now - last_step[0])
            last_step[0] = now
            job.steps_run = step
            job.emit(Progress(step, total, elapsed_ms))
            if job.cancel.is_set():
                raise GenerationCancelled(f"cancelled by the caller after step {step} of {total}")
            if job.deadline is not None and time.monotonic() > job.deadline:
                raise GenerationDeadline(f"deadline passed after step {step} of {total}")

        hooks = StepHooks(on_step, lambda step, images: job.emit(Preview(step, images)))
        started = time.perf_counter()
        try:
            if job.cancel.is_set():
                raise GenerationCancelled("cancelled before it started")
            out: GenerationOutput = self.runner.generate(job.params, hooks)
        except (GenerationCancelled, GenerationDeadline) as exc:
            reason = "deadline" if isinstance(exc, GenerationDeadline) else "cancelled"
            job.outcome = reason
            self.metrics.cancellations.labels(name, reason).inc()
            job.emit(exc)
            return
        except Exception as exc:  # noqa: BLE001 - delivered to the caller, mapped to a status there
            job.outcome = "failed"
            log.error("generation failed", exc_info=exc, extra={"variant": name})
            job.emit(exc)
            return
        self.encode_pool.submit(self._deliver, job, out, queue_ms, started)

    def _deliver(self, job: Job, out: GenerationOutput, queue_ms: float, started: float) -> None:
        """Encode pool: encode the images and emit the Result."""
        name, p = self.runner.spec.name, job.params
        try:
            t0 = time.perf_counter()
            images = [encode_image(im, p.output_format, self.png_level) for im in out.images]
            encode_ms = (time.perf_counter() - t0) * 1e3
        except Exception as exc:  # noqa: BLE001 - delivered to the caller
            job.outcome = "failed"
            log.error("encoding failed", exc_info=exc, extra={"variant": name})
            job.emit(exc)
            return
        total_ms = (time.perf_counter() - started) * 1e3
        self.metrics.generation_seconds.labels(name).observe(total_ms / 1e3)
        self.metrics.images_generated.labels(name).inc(len(images))
        job.outcome = "ok"
        timings = {"queue_ms": queue_ms, **out.timings_ms, "encode_ms": encode_ms, "total_ms": queue_ms + total_ms}
        job.emit(Result(images, FORMATS[p.output_format][1], [p.seed + i for i in range(p.num_images)], job.variant,
                        p.steps, p.guidance, p.width, p.height, timings))


class Sd35Backend:
    """All hosted variants, their queues and adapters."""

    def __init__(self, config: Sd35Config, metrics: Sd35Metrics, pipelines: dict | None = None) -> None:
        watch_gpu_memory(metrics)
        self.config = config
        self.metrics = metrics
        specs = variant_specs(config)
        pipelines = pipelines or {}
        self.runners = {v: Sd35Runner(specs[v], path, device=config.device, dtype=config.dtype,
                                      cpu_offload=config.cpu_offload, drop_t5=config.drop_t5, compile=config.compile,
                                      pipeline=pipelines.get(v), torch_threads=config.torch_threads)
                        for v, path in config.model_dirs().items()}
        self.queues: dict[str, VariantQueue] = {}
        self._encode_pool = ThreadPoolExecutor(config.encode_threads, thread_name_prefix="sd35-encode")
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix="sd35-device")
        self.default_variant = config.default_variant or next(iter(self.runners))
        self.ready = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name, runner in self.runners.items():
            queue = VariantQueue(runner, self.config.max_queue, self.metrics, self._device_pool, self._encode_pool,
                                 self.config.png_compress_level)
            await loop.run_in_executor(queue.executor, self._load, runner, self.config.default_size)
            self.queues[name] = queue
            self.metrics.model_ready.labels(name).set(1)
        self.ready = True

    @staticmethod
    def _load(runner: Sd35Runner, side: int) -> None:
        runner.load()
        runner.warmup(side)

    async def close(self) -> None:
        self.ready = False
        for name, queue in self.queues.items():
            for job in list(queue.waiting):
                job.emit(Unavailable("server is shutting down"))
            queue.waiting.clear()
            if queue.running is not None:
                queue.running.cancel.set()
            self.metrics.model_ready.labels(name).set(0)
        self._device_pool.shutdown(wait=True)
        self._encode_pool.shutdown(wait=True)

    # -- validation -------------------------------------------------------------------------------
    def queue_for(self, variant: str) -> VariantQueue:
        if not self.ready:
            raise Unavailable("pipelines are loading (or the server is shutting down)")
        name = variant or self.default_variant
        if name not in self.queues:
            raise VariantNotHosted(f"variant {name!r} is not hosted here; hosted: {', '.join(self.queues)}")
        return self.queues[name]

    def validate(self, r: Request) -> tuple[str, GenerationParams]:
        queue = self.queue_for(r.variant)
        runner, spec, cfg = queue.runner, queue.runner.spec, self.config
        if not r.prompt.strip():
            raise InvalidArgument("prompt", "must not be empty")
        for name, text in (("prompt", r.prompt), ("negative_prompt", r.negative_prompt)):
            if len(text) > cfg.max_prompt_chars:
                raise InvalidArgument(name, f"{len(text)} characters exceed the limit of {cfg.max_prompt_chars}")
        width, height = r.width or cfg.default_size, r.height or cfg.default_size
        for name, side in (("width", width), ("height", height)):
            if side < 16 or side % 16:
                raise InvalidArgument(name, f"{side} must be a positive multiple of 16")
            if side > runner.max_side:
                raise InvalidArgument(name, f"{side} exceeds the model's largest side {runner.max_side}")
        pixels = width * height
        if not spec.min_pixels <= pixels <= spec.max_pixels:
            raise InvalidArgument("width", f"{width}x{height} = {pixels} px is outside {spec.name}'s budget "
                                           f"{spec.min_pixels}..{spec.max_pixels} px")
        steps = spec.default_steps if r.steps is None else r.steps
        if not 1 <= steps <= 100:
            raise InvalidArgument("steps", f"must be 1..100, got {steps}")
        guidance = spec.default_guidance if r.guidance is None else r.guidance
        if not 0.0 <= guidance <= 20.0:
            raise InvalidArgument("guidance_scale", f"must be 0..20, got {guidance}")
        num_images = r.num_images or 1
        if not 1 <= num_images <= 4:
            raise InvalidArgument("num_images", f"must be 1..4, got {num_images}")
        max_seq = r.max_sequence_length or 256
        if not 1 <= max_seq <= 512:
            raise InvalidArgument("max_sequence_length", f"must be 1..512, got {max_seq}")
        seed = secrets.randbelow(MAX_SEED) if r.seed is None else r.seed
        if not 0 <= seed <= MAX_SEED:
            raise InvalidArgument("seed", f"must be 0..{MAX_SEED}")
        if r.output_format not in FORMATS:
            raise InvalidArgument("output_format", f"must be one of {', '.join(FORMATS)}")
        if not 0 <= r.preview_every <= 100:
            raise InvalidArgument("preview_every", "must be 0..100")
        for i, (name, weight) in enumerate(r.adapters):
            if name not in runner.adapters:
                raise AdapterNotFound(f"adapters[{i}]: adapter {name!r} is not loaded for {spec.name}")
            if not -4.0 <= weight <= 4.0:
                raise InvalidArgument(f"adapters[{i}].weight", f"must be -4..4, got {weight}")
        if len({n for n, _ in r.adapters}) != len(r.adapters):
            raise InvalidArgument("adapters", "names an adapter twice")
        return spec.name, GenerationParams(r.prompt, r.negative_prompt, width, height, steps, guidance, seed,
                                           num_images, max_seq, tuple(r.adapters), r.output_format, r.preview_every)

    # -- generation ---------------------------------------------------------------------------------
    async def generate(self, request: Request, timeout_s: float | None = None) -> AsyncIterator[Event]:
        """Validate, queue, and yield Queued / Progress / Preview events, then the Result."""
        variant, params = self.validate(request)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        job = Job(variant, params, loop, deadline)
        self.queues[variant].submit(job)
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Result):
                    return
        finally:
            job.cancel.set()  # no-op when finished; stops the loop at the next step if the caller left

    # -- adapters ----------------------------------------------------------------------------------
    def adapter_file(self, relative: str) -> Path:
        """Resolve a LoadAdapter path strictly under the adapter root."""
        if not self.config.adapter_root:
            raise FailedPrecondition("adapter loading is disabled; start the service with --adapter-root DIR")
        if not relative:
            raise BadAdapterPath("path", "is required")
        pure = PurePosixPath(relative)
        if pure.is_absolute() or Path(relative).is_absolute():
            raise BadAdapterPath("path", "must be relative to the adapter root")
        if ".." in pure.parts:
            raise BadAdapterPath("path", "must not contain '..'")
        if pure.suffix != ".safetensors":
            raise BadAdapterPath("path", "only .safetensors files can be loaded")
        root = Path(self.config.adapter_root).resolve()
        full = (root / pure).resolve()
        if not full.is_relative_to(root):
            raise BadAdapterPath("path", "resolves outside the adapter root (symlink)")
        if not full.is_file():
            raise AdapterNotFound(f"path: no adapter file {relative!r} under the adapter root")
        return full

    async def load_adapter(self, name: str, path: str, variant: str) -> tuple[str, dict]:
        queue = self.queue_for(variant)
        if not _NAME.match(name):
            raise InvalidArgument("name", "must be 1..64 characters of [A-Za-z0-9_.-]")
        if name in queue.runner.adapters:
            raise AlreadyExists(f"adapter {name!r} is already loaded for {queue.runner.spec.name}")
        if len(queue.runner.adapters) >= self.config.max_adapters:
            raise ResourceExhausted(f"{self.config.max_adapters} adapters loaded; unload one first")
        file = self.adapter_file(path)
        try:  # on the worker thread: serialised with generations, never during one
            info = await asyncio.get_running_loop().run_in_executor(queue.executor, queue.runner.load_adapter, name, file)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise InvalidArgument("path", f"not a LoRA for this model: {str(exc)[:200]}") from exc
        self.metrics.adapter_loads.labels(queue.runner.spec.name).inc()
        info = dict(info, path=str(file.relative_to(Path(self.config.adapter_root).resolve())))
        return queue.runner.spec.name, info

    async def unload_adapter(self, name: str, variant: str) -> None:
        queue = self.queue_for(variant)
        if name not in queue.runner.adapters:
            raise AdapterNotFound(f"adapter {name!r} is not loaded for {queue.runner.spec.name}")
        await asyncio.get_running_loop().run_in_executor(queue.executor, queue.runner.unload_adapter, name)

    def list_adapters(self, variant: str = "") -> list[tuple[str, str, dict]]:
        names = [variant] if variant else list(self.queues)
        out = []
        for v in names:
            runner = self.queue_for(v).runner
            root = Path(self.config.adapter_root).resolve() if self.config.adapter_root else None
            for name, info in sorted(runner.adapters.items()):
                rel = str(Path(info["path"]).relative_to(root)) if root else info["path"]
                out.append((v, name, dict(info, path=rel)))
        return out

    def describe(self) -> list[Sd35Runner]:
        if not self.ready:
            raise Unavailable("pipelines are loading")
        return [q.runner for q in self.queues.values()]

    def jobs(self, variant: str) -> Sequence[Job]:
        """Recently finished jobs of a variant (for tests and diagnostics)."""
        return list(self.queues[variant].history)
