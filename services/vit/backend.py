"""The ViT data plane: validation, admission, preprocessing and micro-batching (post-processing: :mod:`.tasks`).

Transport-free (no gRPC): the servicer converts protobuf to these calls and back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from services.common import tracing
from services.common.admission import Admission
from services.common.backend import ModelInfo, ServiceBackend
from services.common.batcher import MicroBatcher
from services.common.errors import DeadlineExceeded, InvalidArgument
from services.common.metrics import Metrics
from services.common.weights import WeightsProvenance, describe_weights
from services.torch_runtime import watch_gpu_memory
from services.vit.capabilities import CAPABILITIES
from services.vit.config import VitConfig
from services.vit.engine import FINAL_LAYER, make_engine
from services.vit.errors import InvalidImage, TritonUnavailable
from services.vit.heads import Head, HeadRegistry, fit_linear_probe
from services.vit.images import check_header, decode_image, load_rgb
from services.vit.tasks import (
    IMAGES,
    POOLINGS,
    Classification,
    ClassifyTask,
    EmbedTask,
    Timings,
    VitDescription,
    WorkItem,
    hidden_layers,
    postprocess,
    timings,
)

log = logging.getLogger(__name__)

async def _within(future: asyncio.Future, timeout_s: float):  # the future's result
    try:
        return await asyncio.wait_for(future, timeout_s)
    except TimeoutError:
        raise DeadlineExceeded("deadline passed while the images waited for decoding") from None


class VitBackend(ServiceBackend):
    """Owns the engine, its device thread, admission, the batcher and the custom heads.

    Request path: validate (cheap) → admit or refuse at once (:class:`Admission`, counted in images,
    before any pixel is decoded) → decode + preprocess on the preprocess pool → the micro-batcher →
    ``await engine.infer(batch)`` (whichever engine: torch or ONNX Runtime on the device thread, or a
    Triton server) → post-processing (:mod:`.tasks`). The admitted count bounds the decode stage and the
    batch queue together. The native API and OIP both come through here.
    """

    def __init__(self, config: VitConfig, metrics: Metrics) -> None:
        self.config = config
        self.model_id = config.model_id or Path(config.model.rstrip("/")).name or config.model
        super().__init__(self.model_id, metrics)
        self.model = make_engine(config, self.executor)
        self.heads = HeadRegistry(config.max_heads, Path(config.heads_dir) if config.heads_dir else None,
                                  rescan_s=config.heads_rescan_s)
        self._watcher: asyncio.Task[None] | None = None
        watch_gpu_memory(metrics)
        self._pre_pool = ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="vit-pre")
        # Retry hints come from the admission's own drain rate (decode + queue + compute per image).
        self.admission = Admission(config.max_queue, model=self.model_id, metrics=metrics, what="images")
        self._batcher: MicroBatcher[WorkItem, object] = MicroBatcher(
            self._run_batch,
            None,
            model=self.model_id,
            max_batch_size=config.max_batch_size,
            max_queue=config.max_queue,
            max_wait_ms=config.max_wait_ms,
            metrics=metrics,
            concurrency=self.model.concurrency,
        )
        # decoding on the device thread only where there is one (a remote engine's work is elsewhere)
        self.on_device = config.preprocess == "device" and self.model.concurrency == 1
        self.weights = WeightsProvenance("", "unknown")

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self) -> None:
        self.model.load()
        self.weights = describe_weights(self.model.resolved or self.config.model)  # per-file sha256 + reported kind
        warmup = getattr(self.model, "warmup", None)
        if warmup is not None:  # an in-process engine warms up here, on the device thread
            warmup()
        self.heads.dimension = self.model.hidden_size
        self.heads.open()

    async def started(self) -> None:
        await self.model.start(self.config.triton_start_timeout_s)
        if self.config.backend == "triton":
            self._watcher = asyncio.get_running_loop().create_task(self._watch_remote(), name="vit-triton-health")
        self._batcher.start()

    async def stopping(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()  # first, so it cannot report ready again while we drain
        await self._batcher.close()
        await self.model.close()
        self._pre_pool.shutdown(wait=True)

    async def _watch_remote(self) -> None:
        """Follow Triton's model readiness; while it is not ready requests get UNAVAILABLE and health
        says NOT_SERVING (through :attr:`on_readiness`)."""
        while True:
            await asyncio.sleep(self.config.triton_health_interval_s)
            ready = await self.model.ready()
            if ready == self._ready:
                continue
            self._ready = ready  # the base class's flag: require_ready() answers from it
            self.metrics.model_ready.labels(self.model_id).set(int(ready))
            log.warning("triton model readiness changed", extra={"ready": ready, "url": self.config.triton_url})
            if self.on_readiness is not None:
                await self.on_readiness(ready)

    def require_ready(self) -> None:
        if not self._ready and self._watcher is not None and not self._watcher.done():
            raise TritonUnavailable(f"Triton model {self.config.triton_model!r} at {self.config.triton_url} "
                                    "is not ready")
        super().require_ready()

    def describe(self) -> list[ModelInfo]:
        return [self.description().info]

    @property
    def embedding_dimension(self) -> int:
        return self.model.hidden_size

    def description(self) -> VitDescription:
        self.require_ready()
        m = self.model
        info = ModelInfo(
            id=self.model_id,
            family="vit",
            variant=f"patch{m.patch_size}-{m.image_size}",
            parameters=m.parameters,
            precision=m.precision,
            device=m.device_name,
            backend=m.backend,
            license=self.config.license,
            capabilities=CAPABILITIES,
            properties={
                "image_size": str(m.image_size),
                "num_labels": str(len(m.id2label)),
                "hidden_size": str(m.hidden_size),
                "num_hidden_layers": str(m.num_layers),
                "precision_requested": self.config.precision,
                "precision_reason": getattr(m, "precision_reason", ""),
                **self.weights.properties(),
            },
            weights=self.weights,
        )
        return VitDescription(
            info,
            m.image_size,
            len(m.id2label),
            m.num_layers,
            m.hidden_size,
            self.config.max_images_per_request,
            self.config.max_batch_size,
        )

    # -- validation ----------------------------------------------------------------------------
    def _check_count(self, n: int, field: str = IMAGES) -> None:
        field = field.split("[")[0].split(".")[0]
        if n == 0:
            raise InvalidArgument(field, "at least one image is required")
        if n > self.config.max_images_per_request:
            raise InvalidArgument(
                field, f"{n} images exceed the limit of {self.config.max_images_per_request} per request"
            )

    def classify_task(self, top_k: int | None, head_name: str, logits: bool = False) -> ClassifyTask:
        """``top_k`` None means the server default; anything outside 1..num_labels is refused."""
        head = self.heads.get(head_name) if head_name else None
        num_labels = len(head.labels) if head else len(self.model.id2label)
        k = min(self.config.default_top_k, num_labels) if top_k is None else top_k
        if not 1 <= k <= num_labels:
            raise InvalidArgument("top_k", f"must be 1..{num_labels} (number of labels), got {top_k}")
        return ClassifyTask(k, head, logits)

    def embed_task(self, layers: Sequence[int], pooling: str, normalize: bool) -> EmbedTask:
        n = self.model.num_layers
        for i, layer in enumerate(layers):
            if not 0 <= layer <= n:
                raise InvalidArgument(f"layers[{i}]", f"layer {layer} does not exist; valid layers are 0..{n}")
        if pooling not in POOLINGS:
            raise InvalidArgument("pooling", f"must be one of {POOLINGS}")
        return EmbedTask(tuple(layers) or (FINAL_LAYER,), pooling, normalize)

    # -- preprocessing (pool thread) -------------------------------------------------------------
    @staticmethod
    def _field(field: str, i: int) -> str:
        """The client's path to image ``i`` from a template: ``images[{}].data`` → ``images[1].data``."""
        return field.format(i)

    def _prepare(
        self, images: Sequence[bytes], field: str, task: ClassifyTask | EmbedTask, offset: int = 0,
        deadline: float | None = None,
    ) -> list[WorkItem]:
        """Decode and preprocess every image (pool mode), or only check the headers (device mode:
        pixels are decoded on the device thread, per batch). Any bad header fails the whole request
        here, before it joins a batch."""
        cfg = self.config
        items = []
        for i, data in enumerate(images):
            name = self._field(field, offset + i)
            if self.on_device:
                opened = check_header(data, name, max_pixels=cfg.max_image_pixels, min_side=cfg.min_image_side)
                items.append(WorkItem(None, task, opened, name, deadline))
            else:
                image = decode_image(data, name, max_pixels=cfg.max_image_pixels, min_side=cfg.min_image_side)
                items.append(WorkItem(self.model.preprocess(image), task, deadline=deadline))
        return items

    async def _submit(
        self,
        images: Sequence[bytes],
        task: ClassifyTask | EmbedTask,
        timeout_s: float | None,
        field: str = IMAGES,
        offset: int = 0,
        pixels: np.ndarray | None = None,
    ) -> tuple[list[object], Timings]:
        started = time.perf_counter()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self.admission.hold(len(images) if pixels is None else len(pixels)):  # refuse before decoding
            if pixels is not None:  # preprocessed by the client: straight to the batch
                items = [WorkItem(row, task, deadline=deadline) for row in pixels]
            elif self.on_device:  # header checks only: microseconds, fine on the event loop
                items = self._prepare(images, field, task, offset, deadline)
            else:
                with tracing.span("decode", images=len(images)):
                    future = asyncio.get_running_loop().run_in_executor(
                        self._pre_pool, self._prepare, images, field, task, offset, deadline
                    )
                    items = await (future if timeout_s is None else _within(future, timeout_s))
            preprocess_s = time.perf_counter() - started
            self.metrics.preprocess_seconds.labels(self.model_id).observe(preprocess_s)
            remaining = None if timeout_s is None else max(0.0, timeout_s - preprocess_s)
            results = await self._batcher.submit(items, timeout_s=remaining)
        return [r for r, _ in results], timings(started, preprocess_s, [s for _, s in results])

    # -- public API ------------------------------------------------------------------------------
    async def classify(
        self,
        images: Sequence[bytes],
        top_k: int | None = None,
        head: str = "",
        timeout_s: float | None = None,
        field: str = IMAGES,
        logits: bool = False,
    ) -> tuple[list[Classification], Timings]:
        """Top-k labels per image (softmax scores), in request order."""
        self.require_ready()
        self._check_count(len(images), field)
        task = self.classify_task(top_k, head, logits)
        outputs, spent = await self._submit(images, task, timeout_s, field)
        return outputs, spent  # type: ignore[return-value]

    async def classify_pixels(
        self, pixels: np.ndarray, top_k: int | None = None, head: str = "", timeout_s: float | None = None,
        field: str = "pixels", logits: bool = False,
    ) -> tuple[list[Classification], Timings]:
        """:meth:`classify` for images the client preprocessed: float32 ``[N, 3, S, S]`` (S = image size)."""
        self.require_ready()
        self._check_count(len(pixels), field)
        size = self.model.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise InvalidArgument(field, f"shape {list(pixels.shape)} is not [N, 3, {size}, {size}]")
        if not np.isfinite(pixels).all():
            raise InvalidArgument(field, "holds NaN or infinite values")
        task = self.classify_task(top_k, head, logits)
        outputs, spent = await self._submit((), task, timeout_s, field, pixels=pixels.astype(np.float32, copy=False))
        return outputs, spent  # type: ignore[return-value]

    async def embed(
        self,
        images: Sequence[bytes],
        layers: Sequence[int] = (),
        pooling: str = "cls",
        normalize: bool = False,
        timeout_s: float | None = None,
        field: str = IMAGES,
        offset: int = 0,
    ) -> tuple[list[list[tuple[int, np.ndarray]]], Timings]:
        """Per image, one (layer, float32 vector) per requested layer."""
        self.require_ready()
        self._check_count(len(images), field)
        task = self.embed_task(layers, pooling, normalize)
        outputs, spent = await self._submit(images, task, timeout_s, field, offset)
        return outputs, spent  # type: ignore[return-value]

    async def create_head(
        self, name: str, images: Sequence[bytes], labels: Sequence[str], epochs: int = 0, timeout_s: float | None = None
    ) -> Head:
        """Fit a linear probe on normalised final CLS embeddings of labelled examples."""
        self.require_ready()
        HeadRegistry.validate_new(name, list(labels))
        self.heads.check_free(name)
        if not images:
            raise InvalidArgument("examples", "at least two labelled examples are required")
        if len(images) > self.config.max_head_examples:
            raise InvalidArgument(
                "examples", f"{len(images)} examples exceed the limit of {self.config.max_head_examples}"
            )
        if not 0 <= epochs <= 1000:
            raise InvalidArgument("epochs", "must be 0..1000")
        vectors: list[np.ndarray] = []
        step = self.config.max_images_per_request
        for start in range(0, len(images), step):  # bounded chunks keep the queue fair to others
            chunk, _ = await self.embed(
                images[start : start + step], (), "cls", True, timeout_s, field="examples[{}].image.data", offset=start
            )
            vectors.extend(v[0][1] for v in chunk)
        classes = sorted(set(labels))
        targets = np.array([classes.index(label) for label in labels])
        loop = asyncio.get_running_loop()
        weight, bias, acc = await loop.run_in_executor(
            self._pre_pool, fit_linear_probe, np.stack(vectors), targets, len(classes), epochs or 100
        )
        head = Head(name, tuple(classes), weight, bias, len(images), acc)
        self.heads.add(head)
        log.info("head created", extra={"head": name, "labels": len(classes), "examples": len(images)})
        return head

    def list_heads(self) -> list[Head]:
        return self.heads.list()

    def delete_head(self, name: str) -> None:
        self.heads.delete(name)

    # -- the batch function (one batch of the micro-batcher) -------------------------------------
    def _pixels(self, item: WorkItem) -> np.ndarray | InvalidImage:
        if item.pixels is not None:
            return item.pixels
        try:
            return self.model.preprocess(load_rgb(item.image, item.field))  # type: ignore[arg-type]
        except InvalidImage as exc:  # e.g. truncated data: fails only this item
            return exc

    def _decode_batch(self, items: list[WorkItem]) -> list[np.ndarray | InvalidImage]:
        with tracing.span("decode", images=len(items)):
            return [self._pixels(it) for it in items]

    async def _run_batch(self, all_items: list[WorkItem]) -> list[object]:
        """Decode where it is deferred (preprocess=device), run the engine on the good images, post-process."""
        if self.on_device:
            pixels = await self.run(self._decode_batch, all_items)
        else:
            pixels = [it.pixels for it in all_items]  # type: ignore[misc]
        good = [i for i, p in enumerate(pixels) if not isinstance(p, InvalidImage)]
        results: list[object] = list(pixels)  # errors stay in place
        if good:
            items = [all_items[i] for i in good]
            with tracing.span("forward", batch_size=len(items), backend=self.model.backend):
                out = await self.model.infer(np.stack([pixels[i] for i in good]), hidden_layers(items),
                                             timeout_s=self._batch_timeout(items))
            for i, answer in zip(good, postprocess(items, out, self.model.id2label), strict=True):
                results[i] = answer
        return results

    @staticmethod
    def _batch_timeout(items: list[WorkItem]) -> float | None:
        """What is left of the batch's latest deadline (a remote engine stops waiting then)."""
        deadlines = [it.deadline for it in items]
        if any(d is None for d in deadlines):
            return None
        return max(0.0, max(deadlines) - time.monotonic())  # type: ignore[type-var]
