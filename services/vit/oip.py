"""The ViT's models on the Open Inference Protocol (adapters onto :class:`VitBackend`; no gRPC).

- ``vit``: ``IMAGE`` BYTES [-1] (encoded images, decoded and preprocessed by the service exactly as
  Classify does) → ``PROBABILITIES`` FP32 [-1, num_labels] and ``LABELS`` BYTES [-1, k].
- ``vit-tensor``: ``PIXELS`` FP32 [-1, 3, S, S], already preprocessed (S = the model's image size) →
  the same outputs.

Both go through the backend's admission and micro-batcher, like Classify. ModelConfig: the batch is
the first dimension, at most ``max_images_per_request``; dynamic batching up to the compute batch
(``max_batch_size``) with ``max_wait_ms``. Statistics: queue, preprocessing (compute_input), model
compute per batch (compute_infer, batch_stats) and building the outputs (compute_output). Request parameters:
``top_k`` (int64, default the server's ``default_top_k``) sets k; ``head`` (string) picks a custom
head, whose labels then replace the model's. ``LABELS`` entries follow Triton's classification
extension: ``"<probability>:<index>:<label>"``, best first.
"""

from __future__ import annotations

import time

import numpy as np

from services.common.oip import InferRequest, OipModel, Tensor, TensorSpec, bytes_tensor
from services.common.oip_info import Batch, Batching, Phases
from services.vit.backend import VitBackend
from services.vit.tasks import Classification, Timings, softmax

IMAGE, PIXELS, PROBABILITIES, LABELS = "IMAGE", "PIXELS", "PROBABILITIES", "LABELS"


def classification_outputs(results: list[Classification]) -> list[Tensor]:
    """``PROBABILITIES`` and ``LABELS`` for classifications made with ``logits=True``."""
    probabilities = np.stack([softmax(r.logits) for r in results]).astype(np.float32)
    labels = [[f"{lab.score:.6f}:{lab.index}:{lab.label}".encode() for lab in r.labels] for r in results]
    return [Tensor(PROBABILITIES, "FP32", probabilities), bytes_tensor(LABELS, labels)]


class _VitClassifier(OipModel):
    platform = "versus_vit"

    def __init__(self, backend: VitBackend) -> None:
        self.backend = backend
        config = backend.config
        self.max_batch_size = config.max_images_per_request
        self.batching = Batching(config.max_batch_size, int(config.max_wait_ms * 1000))
        self.backend_name = config.backend

    def ready(self) -> bool:
        return self.backend.ready

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:  # type: ignore[override]
        self.backend.require_ready()
        return (TensorSpec(PROBABILITIES, "FP32", (-1, len(self.backend.model.id2label))),
                TensorSpec(LABELS, "BYTES", (-1, -1)))

    async def _classify(self, request: InferRequest, timeout_s: float | None) -> tuple[list[Classification], Timings]:
        raise NotImplementedError

    async def infer(self, request: InferRequest, timeout_s: float | None) -> list[Tensor]:
        results, spent = await self._classify(request, timeout_s)
        started = time.perf_counter()
        outputs = classification_outputs(results)
        self.stats.phases(Phases(len(results), spent.queue_ms / 1e3, spent.preprocess_ms / 1e3, spent.compute_ms / 1e3,
                                 time.perf_counter() - started, tuple(Batch(*b) for b in spent.batches)))
        return outputs


class VitImageModel(_VitClassifier):
    """``vit``: encoded images in."""

    name = "vit"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:  # type: ignore[override]
        return (TensorSpec(IMAGE, "BYTES", (-1,)),)

    async def _classify(self, request: InferRequest, timeout_s: float | None) -> tuple[list[Classification], Timings]:
        images = list(request.inputs[IMAGE].data)
        return await self.backend.classify(images, request.int_parameter("top_k"), request.str_parameter("head"),
                                           timeout_s, field=IMAGE + "[{}]", logits=True)


class VitTensorModel(_VitClassifier):
    """``vit-tensor``: preprocessed pixels in."""

    name = "vit-tensor"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:  # type: ignore[override]
        self.backend.require_ready()
        size = self.backend.model.image_size
        return (TensorSpec(PIXELS, "FP32", (-1, 3, size, size)),)

    async def _classify(self, request: InferRequest, timeout_s: float | None) -> tuple[list[Classification], Timings]:
        return await self.backend.classify_pixels(request.inputs[PIXELS].data, request.int_parameter("top_k"),
                                                  request.str_parameter("head"), timeout_s, field=PIXELS, logits=True)


def oip_models(backend: VitBackend) -> list[OipModel]:
    return [VitImageModel(backend), VitTensorModel(backend)]
