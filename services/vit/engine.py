"""The ViT engine contract: what runs the network, whatever runs it. No gRPC, no batching, no post-processing.

An :class:`Engine` takes a batch of preprocessed pixel tensors and returns the network's outputs
(:class:`ForwardOutput`: logits, the final hidden state and the hidden layers asked for), with ONE async
call, :meth:`Engine.infer` — as KServe's ``Model.predict`` and BentoML's batchable runners give every
backend the same call. Three engines implement it: eager torch (:mod:`services.vit.torch_engine`), ONNX
Runtime in process (:mod:`services.vit.onnx_engine`), and a Triton Inference Server
(:mod:`services.vit.triton_engine`). The backend's one micro-batcher calls it; softmax, pooling and top-k
live once, after it, in :mod:`services.vit.tasks`.

All engines share ONE preprocessing path — the checkpoint's own image processor
(``preprocessor_config.json``), so every engine sees exactly what ``transformers`` would — and the model
facts read from ``config.json``. Loading is the real ``from_pretrained`` path (safetensors only) from a
directory or from a hub id's snapshot in the Hugging Face cache (offline unless downloads are allowed).
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from PIL import Image

from services.common.errors import ModelLoadError
from services.common.hub import ModelSource, resolve_source
from services.vit.errors import NoClassifier

if TYPE_CHECKING:
    from services.vit.config import VitConfig

FINAL_LAYER = -1  # the LayerNorm-ed output the classifier sees
#: The file an ONNX export directory holds (see services.vit.onnx_export).
ONNX_FILE = "model.onnx"
#: What a hub download of a ViT checkpoint fetches: config, processor, safetensors weights.
HUB_FILES = ["*.json", "*.safetensors", "*.txt"]


@dataclass(frozen=True)
class ForwardOutput:
    """One batch's outputs, float32 NumPy on the CPU, whichever engine computed them."""

    logits: np.ndarray  # [B, num_labels]
    final: np.ndarray  # [B, tokens, hidden] after the final LayerNorm
    hidden: dict[int, np.ndarray]  # layer index → [B, tokens, hidden] (before the final LayerNorm)


@dataclass(frozen=True)
class ModelFacts:
    """What the service reports and validates against, read from ``config.json``."""

    image_size: int
    patch_size: int
    num_layers: int
    hidden_size: int
    id2label: tuple[str, ...]
    parameters: int


def facts_from_config(config) -> ModelFacts:
    """Model facts from a transformers ``ViTConfig``; parameters counted on the meta device (no memory)."""
    import torch
    from transformers import ViTForImageClassification

    with torch.device("meta"):
        parameters = sum(p.numel() for p in ViTForImageClassification(config).parameters())
    labels = tuple(config.id2label.get(i, str(i)) for i in range(config.num_labels))
    return ModelFacts(int(config.image_size), int(config.patch_size), int(config.num_hidden_layers),
                      int(config.hidden_size), labels, parameters)


class Engine(abc.ABC):
    """One way of running the network: ``load()`` once, then ``await infer(batch)`` for every batch.

    Subclasses load the weights and implement :meth:`infer`; the processor and the facts are shared.
    ``concurrency`` is how many batches the engine takes at once (1 for a local device thread; a remote
    server queues and batches more itself).
    """

    backend: ClassVar[str] = ""
    concurrency: int = 1

    def __init__(self, source: str, *, precision: str = "auto", allow_download: bool = False) -> None:
        self.source = source
        self.requested_precision = precision
        self.precision = precision  # resolved by load()
        self.precision_reason = "asked for"
        self.allow_download = allow_download
        self.processor = None
        self.facts: ModelFacts | None = None
        self.resolved: ModelSource | None = None  # the directory or hub snapshot the files come from

    # -- the contract ---------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device_name(self) -> str:
        """Where the network runs, as GetModelInfo reports it ('cpu', 'cuda:0', 'triton:HOST:PORT')."""

    @abc.abstractmethod
    def load(self) -> None:
        """Load processor, facts and weights; resolve ``precision`` (blocking; on the device thread)."""

    @abc.abstractmethod
    async def infer(self, pixel_values: np.ndarray, layers: frozenset[int] = frozenset(),
                    timeout_s: float | None = None) -> ForwardOutput:
        """Run one ``[B, 3, H, W]`` float32 batch; ``layers`` are the hidden layers wanted besides the final."""

    async def start(self, timeout_s: float) -> None:
        """Once loaded and the event loop runs: connect and warm up (one real batch before SERVING)."""
        size = self.image_size
        await self.infer(np.zeros((1, 3, size, size), np.float32), timeout_s=timeout_s)

    async def ready(self) -> bool:
        """Whether the engine can take work now (a remote engine asks its server)."""
        return self.facts is not None

    async def close(self) -> None:  # noqa: B027 - an optional hook
        """Release connections (local engines hold none)."""

    # -- shared ---------------------------------------------------------------------------------
    def resolve(self) -> ModelSource:
        """The local directory of ``source``: itself, or a hub id's snapshot in the Hugging Face cache."""
        if self.resolved is None:
            self.resolved = resolve_source(self.source, allow_download=self.allow_download, allow_patterns=HUB_FILES)
        return self.resolved

    def load_processor(self) -> None:
        """The checkpoint's image processor and its model facts (no weights)."""
        from transformers import AutoConfig, AutoImageProcessor

        path = str(self.resolve().path)
        try:
            self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load {self.source}: {exc}") from exc
        if getattr(config, "model_type", "") != "vit":
            raise NoClassifier(f"{self.source} is not a ViT checkpoint (model_type {config.model_type!r})")
        self.facts = facts_from_config(config)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB image → ``[3, H, W]`` float32 pixel values, via the checkpoint's processor.

        NumPy, not torch: preprocessing may run on its own thread, and the device thread stays the only
        one doing torch work.
        """
        assert self.processor is not None, "load() first"
        return np.asarray(self.processor(images=image, return_tensors="np")["pixel_values"][0], dtype=np.float32)

    def _facts(self) -> ModelFacts:
        assert self.facts is not None, "load() first"
        return self.facts

    @property
    def id2label(self) -> tuple[str, ...]:
        return self._facts().id2label

    @property
    def num_layers(self) -> int:
        return self._facts().num_layers

    @property
    def hidden_size(self) -> int:
        return self._facts().hidden_size

    @property
    def image_size(self) -> int:
        return self._facts().image_size

    @property
    def patch_size(self) -> int:
        return self._facts().patch_size

    @property
    def parameters(self) -> int:
        return self._facts().parameters


class LocalEngine(Engine):
    """An engine that computes in this process: :meth:`forward` blocks, on the ONE device thread.

    :meth:`infer` hands the batch to that thread (in the caller's context, so the forward span nests
    under the batch span); nothing runs the network on the event loop.
    """

    def __init__(self, source: str, *, precision: str = "auto", allow_download: bool = False,
                 executor: Executor | None = None) -> None:
        super().__init__(source, precision=precision, allow_download=allow_download)
        self.executor = executor

    @abc.abstractmethod
    def forward(self, pixel_values: np.ndarray, layers: frozenset[int] = frozenset()) -> ForwardOutput:
        """Run one batch, blocking (on the device thread; tools and benchmarks call it directly)."""

    async def infer(self, pixel_values: np.ndarray, layers: frozenset[int] = frozenset(),
                    timeout_s: float | None = None) -> ForwardOutput:
        # An in-process forward cannot be interrupted: the deadline was checked when the batch was formed.
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, contextvars.copy_context().run, self.forward, pixel_values, layers)

    def warmup(self) -> None:
        """One real forward so lazy allocations and mmap'd weights are paid before SERVING (blocking)."""
        size = self.image_size
        self.forward(np.zeros((1, 3, size, size), np.float32))

    async def start(self, timeout_s: float) -> None:
        """Warmed up in :meth:`warmup` on the device thread during load; nothing more to do."""


def make_engine(config: VitConfig, executor: Executor | None = None) -> Engine:
    """The engine for ``config.backend`` (ONNX Runtime and tritonclient are imported only when chosen)."""
    if config.backend == "onnx":
        from services.vit.onnx_engine import OnnxEngine

        return OnnxEngine(config.model, precision=config.precision, device=config.device,
                          threads=config.onnx_threads or config.torch_threads, executor=executor)
    if config.backend == "triton":
        from services.vit.triton_engine import TritonEngine

        return TritonEngine(config.model, url=config.triton_url, model_name=config.triton_model,
                            precision=config.precision, allow_download=config.allow_download)
    from services.vit.torch_engine import TorchEngine

    return TorchEngine(config.model, precision=config.precision, device=config.device,
                       allow_download=config.allow_download, torch_threads=config.torch_threads, executor=executor)
