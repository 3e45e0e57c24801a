"""The ViT data plane: validation, preprocessing, micro-batching and post-processing.

Transport-free (no gRPC): the servicer converts protobuf to these calls and back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.common.batcher import ItemStats, MicroBatcher
from services.common.errors import InvalidArgument, Unavailable
from services.common.metrics import Metrics
from services.vit.config import VitConfig
from services.vit.heads import Head, HeadRegistry, fit_linear_probe
from services.vit.errors import InvalidImage
from services.vit.images import check_header, decode_image, load_rgb
from services.vit.model import FINAL_LAYER, VitModel, pool, softmax_top_k
from services.torch_runtime import watch_gpu_memory

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class LabelScore:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class ClassifyTask:
    top_k: int
    head: Head | None = None
    logits: bool = False


@dataclass(frozen=True)
class Classification:
    labels: list[LabelScore]
    logits: np.ndarray | None  # [num_labels] float32 when asked for


@dataclass(frozen=True)
class EmbedTask:
    layers: tuple[int, ...]  # FINAL_LAYER for the final output
    pooling: str
    normalize: bool


@dataclass(frozen=True)
class WorkItem:
    pixels: np.ndarray | None  # [3, H, W] float32, or None when the device thread preprocesses
    task: ClassifyTask | EmbedTask
    image: object = None  # PIL image opened by check_header (preprocess=device)
    field: str = ""


@dataclass(frozen=True)
class Timings:
    queue_ms: float
    compute_ms: float
    preprocess_ms: float
    total_ms: float


@dataclass(frozen=True)
class ModelDescription:
    model_id: str
    parameters: int
    precision: str
    device: str
    license: str
    image_size: int
    num_labels: int
    num_hidden_layers: int
    hidden_size: int
    max_images_per_request: int
    max_batch_size: int


def _timings(started: float, preprocess_s: float, stats: Sequence[ItemStats]) -> Timings:
    queue = max((s.queue_s for s in stats), default=0.0)
    compute = sum({s.batch_id: s.compute_s for s in stats}.values())
    return Timings(queue * 1e3, compute * 1e3, preprocess_s * 1e3, (time.perf_counter() - started) * 1e3)


class VitBackend:
    """Owns the model, its worker thread, the batcher and the custom heads."""

    def __init__(self, config: VitConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.model_id = config.model_id or Path(config.model.rstrip("/")).name or config.model
        self.model = VitModel(config.model, precision=config.precision, device=config.device,
                              allow_download=config.allow_download, torch_threads=config.torch_threads)
        self.heads = HeadRegistry(config.max_heads)
        watch_gpu_memory(metrics)
        # One thread owns the device; preprocessing has its own pool so it overlaps compute.
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix="vit-model")
        self._pre_pool = ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="vit-pre")
        self._batcher: MicroBatcher[WorkItem, object] = MicroBatcher(
            self._run_batch, self._device_pool, model=self.model_id, max_batch_size=config.max_batch_size,
            max_queue=config.max_queue, max_wait_ms=config.max_wait_ms, metrics=metrics)
        self.on_device = config.preprocess == "device"
        self.ready = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._device_pool, self._load_and_warm)
        self._batcher.start()
        self.ready = True
        self.metrics.model_ready.labels(self.model_id).set(1)

    def _load_and_warm(self) -> None:
        self.model.load()
        self.model.warmup()

    async def close(self) -> None:
        self.ready = False
        self.metrics.model_ready.labels(self.model_id).set(0)
        await self._batcher.close()
        self._device_pool.shutdown(wait=True)
        self._pre_pool.shutdown(wait=True)

    @property
    def batcher(self) -> MicroBatcher[WorkItem, object]:
        return self._batcher

    def describe(self) -> ModelDescription:
        self._require_ready()
        m = self.model
        return ModelDescription(self.model_id, m.parameters, self.config.precision, str(m.device), self.config.license,
                                m.image_size, len(m.id2label), m.num_layers, m.hidden_size,
                                self.config.max_images_per_request, self.config.max_batch_size)

    # -- validation ----------------------------------------------------------------------------
    def _require_ready(self) -> None:
        if not self.ready:
            raise Unavailable("model is not loaded yet (or is shutting down)")

    def _check_count(self, n: int, field: str = "images") -> None:
        if n == 0:
            raise InvalidArgument(field, "at least one image is required")
        if n > self.config.max_images_per_request:
            raise InvalidArgument(field, f"{n} images exceed the limit of {self.config.max_images_per_request} per request")

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
    def _field(field: str, i: int, n: int) -> str:
        return f"{field}[{i}]" if n > 1 or field == "images" else field

    def _prepare(self, images: Sequence[bytes], field: str, task: ClassifyTask | EmbedTask) -> list[WorkItem]:
        """Decode and preprocess every image (pool mode), or only check the headers (device mode:
        pixels are decoded on the device thread, per batch). Any bad header fails the whole request
        here, before it joins a batch."""
        cfg = self.config
        items = []
        for i, data in enumerate(images):
            name = self._field(field, i, len(images))
            if self.on_device:
                opened = check_header(data, name, max_pixels=cfg.max_image_pixels, min_side=cfg.min_image_side)
                items.append(WorkItem(None, task, opened, name))
            else:
                image = decode_image(data, name, max_pixels=cfg.max_image_pixels, min_side=cfg.min_image_side)
                items.append(WorkItem(self.model.preprocess(image), task))
        return items

    async def _submit(self, images: Sequence[bytes], task: ClassifyTask | EmbedTask, timeout_s: float | None,
                      field: str = "images") -> tuple[list[object], Timings]:
        started = time.perf_counter()
        if self.on_device:  # header checks only: microseconds, fine on the event loop
            items = self._prepare(images, field, task)
        else:
            items = await asyncio.get_running_loop().run_in_executor(self._pre_pool, self._prepare, images, field, task)
        preprocess_s = time.perf_counter() - started
        self.metrics.preprocess_seconds.labels(self.model_id).observe(preprocess_s)
        remaining = None if timeout_s is None else max(0.0, timeout_s - preprocess_s)
        results = await self._batcher.submit(items, timeout_s=remaining)
        return [r for r, _ in results], _timings(started, preprocess_s, [s for _, s in results])

    # -- public API ------------------------------------------------------------------------------
    async def classify(self, images: Sequence[bytes], top_k: int | None = None, head: str = "",
                       timeout_s: float | None = None, field: str = "images",
                       logits: bool = False) -> tuple[list[Classification], Timings]:
        """Top-k labels per image (softmax scores), in request order."""
        self._require_ready()
        self._check_count(len(images), field)
        task = self.classify_task(top_k, head, logits)
        outputs, timings = await self._submit(images, task, timeout_s, field)
        return outputs, timings  # type: ignore[return-value]

    async def embed(self, images: Sequence[bytes], layers: Sequence[int] = (), pooling: str = "cls",
                    normalize: bool = False, timeout_s: float | None = None) -> tuple[list[list[tuple[int, np.ndarray]]], Timings]:
        """Per image, one (layer, float32 vector) per requested layer."""
        self._require_ready()
        self._check_count(len(images))
        task = self.embed_task(layers, pooling, normalize)
        outputs, timings = await self._submit(images, task, timeout_s)
        return outputs, timings  # type: ignore[return-value]

    async def create_head(self, name: str, images: Sequence[bytes], labels: Sequence[str], epochs: int = 0,
                          timeout_s: float | None = None) -> Head:
        """Fit a linear probe on normalised final CLS embeddings of labelled examples."""
        self._require_ready()
        HeadRegistry.validate_new(name, list(labels))
        self.heads.check_free(name)
        if len(images) > self.config.max_head_examples:
            raise InvalidArgument("examples", f"{len(images)} examples exceed the limit of {self.config.max_head_examples}")
        if not 0 <= epochs <= 1000:
            raise InvalidArgument("epochs", "must be 0..1000")
        vectors: list[np.ndarray] = []
        step = self.config.max_images_per_request
        for start in range(0, len(images), step):  # bounded chunks keep the queue fair to others
            chunk, _ = await self.embed(images[start:start + step], (), "cls", True, timeout_s)
            vectors.extend(v[0][1] for v in chunk)
        classes = sorted(set(labels))
        targets = np.array([classes.index(label) for label in labels])
        loop = asyncio.get_running_loop()
        weight, bias, acc = await loop.run_in_executor(
            self._pre_pool, fit_linear_probe, np.stack(vectors), targets, len(classes), epochs or 100)
        head = Head(name, tuple(classes), weight, bias, len(images), acc)
        self.heads.add(head)
        log.info("head created", extra={"head": name, "labels": len(classes), "examples": len(images)})
        return head

    # -- the batch function (device thread) ------------------------------------------------------
    def _pixels(self, item: WorkItem) -> np.ndarray | InvalidImage:
        if item.pixels is not None:
            return item.pixels
        try:
            return self.model.preprocess(load_rgb(item.image, item.field))  # type: ignore[arg-type]
        except InvalidImage as exc:  # e.g. truncated data: fails only this item
            return exc

    def _run_batch(self, all_items: list[WorkItem]) -> list[object]:
        pixels = [self._pixels(it) for it in all_items]
        good = [i for i, p in enumerate(pixels) if not isinstance(p, InvalidImage)]
        results: list[object] = list(pixels)  # errors stay in place
        if good:
            for i, out in zip(good, self._forward([all_items[i] for i in good], [pixels[i] for i in good])):
                results[i] = out
        return results

    def _forward(self, items: list[WorkItem], pixels: list[np.ndarray]) -> list[object]:
        layers = frozenset(l for it in items if isinstance(it.task, EmbedTask) for l in it.task.layers if l != FINAL_LAYER)
        out = self.model.forward(np.stack(pixels), layers)
        results: list[object] = []
        for row, item in enumerate(items):
            task = item.task
            if isinstance(task, ClassifyTask):
                results.append(self._labels(out.logits[row], out.final[row], task))
            else:
                results.append([(layer, pool(out.final[row] if layer == FINAL_LAYER else out.hidden[layer][row],
                                             task.pooling, task.normalize)) for layer in task.layers])
        return results

    def _labels(self, logits: torch.Tensor, final: torch.Tensor, task: ClassifyTask) -> Classification:
        if task.head is None:
            names = self.model.id2label
        else:
            names = list(task.head.labels)
            logits = task.head.logits(torch.nn.functional.normalize(final[0].float(), dim=0))
        labels = [LabelScore(i, names[i], s) for i, s in softmax_top_k(logits, task.top_k)]
        return Classification(labels, logits.numpy().astype(np.float32) if task.logits else None)
