"""The ViT model behind a small interface: load, preprocess, forward. No gRPC, no batching.

:class:`VitEngine` is what the backend talks to, whatever runs the network: eager torch
(:class:`VitModel`, here), ONNX Runtime (:mod:`services.vit.onnx_engine`) or a Triton Inference Server
(:mod:`services.vit.triton_engine`). All share ONE preprocessing path — the checkpoint's own image
processor (``preprocessor_config.json``), so every backend sees exactly what ``transformers`` would —
and one output shape (:class:`ForwardOutput`, NumPy float32), so post-processing, heads, metrics and
errors are the same whichever backend serves.

Loading is the real ``from_pretrained`` path (safetensors only) from a directory or from a hub id's
snapshot in the Hugging Face cache (:mod:`services.common.hub`; offline unless downloads are allowed).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from services.common.errors import ConfigError, ModelLoadError
from services.common.hub import ModelSource, resolve_source
from services.torch_runtime import resolve_device, set_threads
from services.vit.errors import NoClassifier, PickleCheckpointRefused
from services.vit.precision import auto_precision, cpu_flags

log = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
FINAL_LAYER = -1  # the LayerNorm-ed output the classifier sees
#: The file an ONNX export directory holds (see services.vit.onnx_export).
ONNX_FILE = "model.onnx"


def check_safetensors_dir(path: Path) -> None:
    """Refuse directories whose only weights are pickle files (they can run code on load)."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise PickleCheckpointRefused(
            f"{path} holds only pickle weights ({', '.join(pickles)}); convert them to safetensors "
            "(model.save_pretrained(dir, safe_serialization=True)) — pickle checkpoints are refused"
        )
    if (path / ONNX_FILE).exists():
        raise ModelLoadError(f"{path} is an ONNX export (no safetensors weights); serve it with --backend onnx")
    raise ModelLoadError(f"{path} holds no *.safetensors weights")


@dataclass(frozen=True)
class ForwardOutput:
    """One batch's outputs, float32 NumPy on the CPU, whichever backend computed them."""

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
    from transformers import ViTForImageClassification

    with torch.device("meta"):
        parameters = sum(p.numel() for p in ViTForImageClassification(config).parameters())
    labels = tuple(config.id2label.get(i, str(i)) for i in range(config.num_labels))
    return ModelFacts(int(config.image_size), int(config.patch_size), int(config.num_hidden_layers),
                      int(config.hidden_size), labels, parameters)


#: What a hub download of a ViT checkpoint fetches: config, processor, safetensors weights.
HUB_FILES = ["*.json", "*.safetensors", "*.txt"]


class VitEngine(abc.ABC):
    """One way of running the network. Subclasses load the weights; the processor and facts are shared."""

    backend: ClassVar[str] = ""

    def __init__(self, source: str, *, precision: str = "auto", allow_download: bool = False) -> None:
        self.source = source
        self.requested_precision = precision
        self.precision = precision  # resolved by load()
        self.allow_download = allow_download
        self.processor = None
        self.facts: ModelFacts | None = None
        self.resolved: ModelSource | None = None  # the directory or hub snapshot the files come from

    # -- shared -------------------------------------------------------------------------------
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

    def warmup(self) -> None:
        """One real forward so lazy allocations and mmap'd weights are paid before SERVING."""
        size = self.image_size
        self.forward(np.zeros((1, 3, size, size), np.float32))

    # -- per backend ------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def device_name(self) -> str:
        """Where the network runs, as GetModelInfo reports it ('cpu', 'cuda:0', 'triton:HOST:PORT')."""

    @abc.abstractmethod
    def load(self) -> None:
        """Load processor, facts and weights; resolve ``precision``."""

    @abc.abstractmethod
    def forward(self, pixel_values: np.ndarray, layers: frozenset[int] = frozenset()) -> ForwardOutput:
        """Run one ``[B, 3, H, W]`` float32 batch (blocking; on the device thread)."""


class VitModel(VitEngine):
    """Eager torch: a ViTForImageClassification checkpoint."""

    backend = "torch"

    def __init__(self, source: str, *, precision: str = "auto", device: str = "auto",
                 allow_download: bool = False, torch_threads: int = 0) -> None:
        super().__init__(source, precision=precision, allow_download=allow_download)
        self.device = resolve_device(device)
        self.torch_threads = torch_threads
        self.model: torch.nn.Module | None = None
        self.precision_reason = "asked for"

    @property
    def device_name(self) -> str:
        return str(self.device)

    def resolve_precision(self) -> str:
        if self.requested_precision == "auto":
            self.precision, self.precision_reason = auto_precision(self.device.type, cpu_flags())
        if self.precision == "int8" and self.device.type != "cpu":
            raise ConfigError("int8 (dynamic quantization) runs on the CPU only; use bf16/fp16 on GPUs")
        return self.precision

    def load(self) -> None:
        """Load processor and weights with the precision and device asked for."""
        from transformers import AutoModelForImageClassification

        set_threads(self.torch_threads)
        self.resolve_precision()
        path = self.resolve().path
        check_safetensors_dir(path)
        self.load_processor()
        try:
            model = AutoModelForImageClassification.from_pretrained(path, use_safetensors=True, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load {self.source}: {exc}") from exc
        if not hasattr(model, "vit") or not isinstance(getattr(model, "classifier", None), torch.nn.Linear):
            raise NoClassifier(f"{self.source} is not a ViT image-classification checkpoint")
        model.eval()
        if self.precision == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        else:
            model = model.to(device=self.device, dtype=_DTYPES[self.precision])
        self.model = model
        log.info("model loaded", extra={"source": self.source, "backend": self.backend, "precision": self.precision,
                                        "precision_reason": self.precision_reason, "device": str(self.device),
                                        "parameters": self.parameters})

    @property
    def config(self):  # transformers' ViTConfig
        assert self.model is not None, "load() first"
        return self.model.config

    @torch.inference_mode()
    def forward_torch(self, pixel_values: torch.Tensor | np.ndarray,
                      layers: frozenset[int] = frozenset()) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The math of ViTForImageClassification.forward, keeping the final hidden state (for embeddings)
        and, when asked, the per-block hidden states; torch tensors on the model's device and dtype."""
        assert self.model is not None, "load() first"
        dtype = torch.float32 if self.precision == "int8" else _DTYPES[self.precision]
        if isinstance(pixel_values, np.ndarray):
            pixel_values = torch.from_numpy(pixel_values)
        x = pixel_values.to(device=self.device, dtype=dtype)
        out = self.model.vit(x, output_hidden_states=bool(layers))
        final = out.last_hidden_state
        logits = self.model.classifier(final[:, 0, :])
        hidden = {i: out.hidden_states[i] for i in layers} if layers else {}
        return logits, final, hidden

    def forward(self, pixel_values: torch.Tensor | np.ndarray, layers: frozenset[int] = frozenset()) -> ForwardOutput:
        logits, final, hidden = self.forward_torch(pixel_values, layers)
        return ForwardOutput(_np(logits), _np(final), {i: _np(h) for i, h in hidden.items()})


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def softmax_top_k(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(index, probability) of the ``k`` best classes of one logits row, best first (ties: lower index)."""
    row = np.asarray(logits, dtype=np.float64)
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(i), float(probs[i])) for i in order]


def pool(hidden: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """``[tokens, hidden]`` → one float32 vector: CLS token or mean over tokens, optionally L2-normed."""
    hidden = np.asarray(hidden, dtype=np.float32)
    vec = hidden[0] if pooling == "cls" else hidden.mean(axis=0)
    if normalize:
        vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
    return vec.astype(np.float32, copy=False)
