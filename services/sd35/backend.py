"""The SD3.5 data plane behind one :class:`ServiceBackend` (no gRPC).

Ties the pieces together: the variants' pipelines (:mod:`.engine`), request validation
(:mod:`.requests`), the queues on the device thread (:mod:`.scheduler`) and adapter files
(:mod:`.adapters`). The servicer calls only the public methods here and reads model facts only
through :meth:`Sd35Backend.describe` / :meth:`Sd35Backend.description`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.common.backend import Capability, ModelInfo, ServiceBackend
from services.common.errors import quote
from services.common.weights import WeightsProvenance, describe_weights
from services.sd35 import adapters
from services.sd35.adapters import AdapterInfo
from services.sd35.config import Sd35Config
from services.sd35.engine import Sd35Runner
from services.sd35.errors import AdapterAlreadyLoaded, AdapterNotFound, TooManyAdapters, VariantNotHosted
from services.sd35.metrics import Sd35Metrics
from services.sd35.requests import Event, GenerationParams, Limits, Request, Result, check_adapter_name, validate
from services.sd35.scheduler import Job, Scheduler
from services.sd35.variants import VariantSpec, variant_specs
from services.torch_runtime import watch_gpu_memory

CAPABILITIES = (
    Capability("text-to-image", "Text-to-image", "MMDiT generation streamed with per-step progress."),
    Capability("seeded-determinism", "Seeded determinism",
               "Same request and seed give byte-identical images; image i uses seed + i."),
    Capability("lora-adapters", "LoRA adapters", "Per-request adapter weights; load and unload at run time."),
    Capability("previews", "Live previews", "Cheap RGB previews from the latents every K steps."),
    Capability("cancellation", "Cancellation", "A cancel or expired deadline stops within one denoising step."),
)


@dataclass(frozen=True)
class VariantDescription:
    """One hosted variant: its model facts, defaults and limits, as the engine applies them."""

    model: ModelInfo
    spec: VariantSpec
    default_width: int
    default_height: int
    max_side: int
    #: Skip-layer-guidance layers the engine uses (the model card's, limited to the layers present).
    skip_guidance_layers: tuple[int, ...]


@dataclass(frozen=True)
class ServiceDescription:
    """Everything GetModelInfo reports."""

    variants: tuple[VariantDescription, ...]
    default_variant: str
    max_prompt_chars: int
    max_queue: int
    max_adapters: int


class Sd35Backend(ServiceBackend):
    """All hosted variants, their queues and adapters, on one device thread."""

    def __init__(self, config: Sd35Config, metrics: Sd35Metrics, pipelines: dict | None = None) -> None:
        super().__init__("sd35", metrics)
        watch_gpu_memory(metrics)
        self.config = config
        self.metrics: Sd35Metrics = metrics
        specs = variant_specs(config)
        pipelines = pipelines or {}
        self.runners = {v: Sd35Runner(specs[v], path, device=config.device, dtype=config.precision,
                                      cpu_offload=config.cpu_offload, drop_t5=config.drop_t5, compile=config.compile,
                                      pipeline=pipelines.get(v), torch_threads=config.torch_threads,
                                      allow_download=config.allow_download)
                        for v, path in config.model_dirs().items()}
        self.default_variant = config.default_variant or next(iter(self.runners))
        self.limits = Limits(config.default_size, config.max_prompt_chars)
        self._encode_pool = ThreadPoolExecutor(config.encode_threads, thread_name_prefix="sd35-encode")
        self.scheduler = Scheduler(metrics, self.executor, self._encode_pool, config.max_queue,
                                   config.png_compress_level)
        self._seconds_per_unit: dict[str, float] = {}
        self._weights: dict[str, WeightsProvenance] = {}
        self._loading: dict[str, set[str]] = {v: set() for v in self.runners}  # adapter names being loaded

    # -- lifecycle (ServiceBackend) -----------------------------------------------------------------
    def load(self) -> None:
        """Device thread: load every pipeline and run one warm-up generation, which also seeds the
        queue's wait estimate."""
        for name, runner in self.runners.items():
            runner.load()
            self._weights[name] = describe_weights(runner.resolved or runner.source)
            self._seconds_per_unit[name] = runner.warmup(self.config.default_size)

    async def started(self) -> None:
        for name, runner in self.runners.items():
            self.scheduler.add(runner, self._seconds_per_unit[name])

    async def stopping(self) -> None:
        self.scheduler.close()

    async def close(self) -> None:
        await super().close()
        self._encode_pool.shutdown(wait=True)

    def model_names(self) -> list[str]:
        return list(self.runners)

    # -- description ---------------------------------------------------------------------------------
    def _model_info(self, runner: Sd35Runner) -> ModelInfo:
        return ModelInfo(
            id=runner.source.rstrip("/").split("/")[-1], family="sd3.5", variant=runner.spec.name,
            parameters=runner.parameters, precision=runner.dtype_name, device=str(runner.device), backend="diffusers",
            license=self.config.license, capabilities=CAPABILITIES,
            properties={"transformer_layers": str(runner.num_layers), "max_side": str(runner.max_side),
                        "text_encoder_3": "dropped" if runner.drop_t5 else "t5",
                        "cpu_offload": str(runner.cpu_offload).lower(), "compiled": str(runner.compile).lower(),
                        **self._weights[runner.spec.name].properties()},
            weights=self._weights[runner.spec.name])

    def describe(self) -> list[ModelInfo]:
        self.require_ready()
        return [self._model_info(runner) for runner in self.runners.values()]

    def description(self) -> ServiceDescription:
        """Model facts plus the defaults and limits each variant applies."""
        self.require_ready()
        size = self.config.default_size
        variants = tuple(VariantDescription(self._model_info(r), r.spec, r.spec.fit_side(size, r.max_side),
                                            r.spec.fit_side(size, r.max_side), r.max_side, r.skip_layers)
                         for r in self.runners.values())
        return ServiceDescription(variants, self.default_variant, self.config.max_prompt_chars, self.config.max_queue,
                                  self.config.max_adapters)

    # -- generation ------------------------------------------------------------------------------------
    def _runner(self, variant: str) -> Sd35Runner:
        self.require_ready()
        name = variant or self.default_variant
        if name not in self.runners:
            raise VariantNotHosted(f"variant {quote(name)} is not hosted here; hosted: {', '.join(self.runners)}",
                                   resource_type="variant", resource_name=name)
        return self.runners[name]

    def validate(self, request: Request) -> tuple[str, GenerationParams]:
        """The variant that serves ``request`` and its validated parameters (or the client's error)."""
        runner = self._runner(request.variant)
        return runner.spec.name, validate(request, runner.spec, runner.max_side, self.limits, runner.adapters)

    async def generate(self, request: Request, timeout_s: float | None = None) -> AsyncIterator[Event]:
        """Validate, queue, and yield Queued / Progress / Preview events, then the Result."""
        variant, params = self.validate(request)
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        job = Job(variant, params, asyncio.get_running_loop(), deadline)
        self.scheduler.submit(job)
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

    # -- adapters ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reserve(self, runner: Sd35Runner, name: str) -> Iterator[None]:
        """Hold ``name`` for one LoadAdapter, so concurrent loads of one name give one winner and
        ALREADY_EXISTS for the rest (decided on the event loop, before any work)."""
        loading = self._loading[runner.spec.name]
        if name in runner.adapters or name in loading:
            raise AdapterAlreadyLoaded(f"adapter {quote(name)} is already loaded for {runner.spec.name}")
        if len(runner.adapters) + len(loading) >= self.config.max_adapters:
            raise TooManyAdapters(f"{self.config.max_adapters} adapters are loaded for {runner.spec.name}; "
                                  "unload one first")
        loading.add(name)
        try:
            yield
        finally:
            loading.discard(name)

    async def load_adapter(self, name: str, path: str, variant: str) -> AdapterInfo:
        """Check the name, the path and the file's header, then load it on the device thread."""
        runner = self._runner(variant)
        check_adapter_name(name, "name")
        with self._reserve(runner, name):
            file = adapters.resolve(self.config.adapter_root, path)
            # Off the device thread: a hostile header costs the client's time, not the GPU's.
            rank, size = await asyncio.to_thread(adapters.inspect, file, path)
            relative = str(file.relative_to(Path(self.config.adapter_root).resolve()))
            info = AdapterInfo(name, runner.spec.name, relative, rank, size)
            await self.run(runner.load_adapter, info, file)
        self.metrics.adapter_loads.labels(runner.spec.name).inc()
        return info

    async def unload_adapter(self, name: str, variant: str) -> None:
        runner = self._runner(variant)
        check_adapter_name(name, "name")
        if name not in runner.adapters:
            raise AdapterNotFound(f"adapter {quote(name)} is not loaded for {runner.spec.name}",
                                  resource_type="adapter", resource_name=name)
        await self.run(runner.unload_adapter, name)

    def list_adapters(self, variant: str = "") -> list[AdapterInfo]:
        runners = [self._runner(variant)] if variant else list(self.runners.values())
        return [info for runner in runners for _, info in sorted(runner.adapters.items())]
