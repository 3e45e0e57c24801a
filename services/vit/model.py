"""The ViT model behind a small interface: load, preprocess, forward. No gRPC, no batching.

Loading is the real ``from_pretrained`` path (directory or hub id, safetensors only, offline unless
allowed). Preprocessing is the checkpoint's own image processor (``preprocessor_config.json``), so
the service sees exactly what ``transformers`` would.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from services.common.errors import ConfigError, ModelLoadError
from services.torch_runtime import resolve_device, set_threads
from services.vit.errors import NoClassifier, PickleCheckpointRefused

log = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
FINAL_LAYER = -1  # the LayerNorm-ed output the classifier sees


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
    raise ModelLoadError(f"{path} holds no *.safetensors weights")


@dataclass(frozen=True)
class ForwardOutput:
    """One batch's outputs, float32 on the CPU."""

    logits: torch.Tensor  # [B, num_labels]
    final: torch.Tensor  # [B, tokens, hidden] after the final LayerNorm
    hidden: dict[int, torch.Tensor]  # layer index → [B, tokens, hidden] (before the final LayerNorm)


class VitModel:
    """A ViTForImageClassification checkpoint and its image processor."""

    def __init__(self, source: str, *, precision: str = "fp32", device: str = "auto",
                 allow_download: bool = False, torch_threads: int = 0) -> None:
        self.source = source
        self.precision = precision
        self.device = resolve_device(device)
        self.allow_download = allow_download
        self.torch_threads = torch_threads
        self.model: torch.nn.Module | None = None
        self.processor = None
        self.id2label: list[str] = []
        self.parameters = 0

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        """Load processor and weights with the precision and device asked for."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        set_threads(self.torch_threads)
        if self.precision == "int8" and self.device.type != "cpu":
            raise ConfigError("int8 (dynamic quantization) runs on the CPU only; use bf16/fp16 on GPUs")
        path = Path(self.source)
        local = path.is_dir()
        if local:
            check_safetensors_dir(path)
        elif os.sep in self.source and not path.exists():
            raise ModelLoadError(f"model directory {self.source} does not exist")
        elif not self.allow_download:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        kwargs = {"local_files_only": local or not self.allow_download}
        try:
            self.processor = AutoImageProcessor.from_pretrained(self.source, **kwargs)
            model = AutoModelForImageClassification.from_pretrained(self.source, use_safetensors=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load {self.source}: {exc}") from exc
        if not hasattr(model, "vit") or not isinstance(getattr(model, "classifier", None), torch.nn.Linear):
            raise NoClassifier(f"{self.source} is not a ViT image-classification checkpoint")
        self.parameters = sum(p.numel() for p in model.parameters())
        model.eval()
        if self.precision == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        else:
            model = model.to(device=self.device, dtype=_DTYPES[self.precision])
        self.model = model
        cfg = model.config
        self.id2label = [cfg.id2label.get(i, str(i)) for i in range(cfg.num_labels)]
        log.info("model loaded", extra={"source": self.source, "precision": self.precision,
                                        "device": str(self.device), "parameters": self.parameters})

    @property
    def config(self):  # transformers' ViTConfig
        assert self.model is not None, "load() first"
        return self.model.config

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.config.patch_size)

    # -- compute --------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB image → ``[3, H, W]`` float32 pixel values, via the checkpoint's processor.

        NumPy, not torch: preprocessing may run on its own thread, and the device thread stays the only
        one doing torch work.
        """
        assert self.processor is not None, "load() first"
        return np.asarray(self.processor(images=image, return_tensors="np")["pixel_values"][0], dtype=np.float32)

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor | np.ndarray, layers: frozenset[int] = frozenset()) -> ForwardOutput:
        """Run one batch. The math is ViTForImageClassification.forward's, keeping the final
        hidden state (for embeddings) and, when asked, the per-block hidden states."""
        assert self.model is not None, "load() first"
        dtype = torch.float32 if self.precision == "int8" else _DTYPES[self.precision]
        if isinstance(pixel_values, np.ndarray):
            pixel_values = torch.from_numpy(pixel_values)
        x = pixel_values.to(device=self.device, dtype=dtype)
        out = self.model.vit(x, output_hidden_states=bool(layers))
        final = out.last_hidden_state
        logits = self.model.classifier(final[:, 0, :])
        hidden = {i: out.hidden_states[i].float().cpu() for i in layers} if layers else {}
        return ForwardOutput(logits.float().cpu(), final.float().cpu(), hidden)

    def warmup(self) -> None:
        """One real forward so lazy allocations and mmap'd weights are paid before SERVING."""
        size = self.image_size
        self.forward(torch.zeros(1, 3, size, size))


def softmax_top_k(logits: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """(index, probability) of the ``k`` best classes of one logits row, best first."""
    probs = torch.softmax(logits.float(), dim=-1)
    scores, indices = torch.topk(probs, k)
    return [(int(i), float(s)) for i, s in zip(indices, scores, strict=True)]


def pool(hidden: torch.Tensor, pooling: str, normalize: bool) -> np.ndarray:
    """``[tokens, hidden]`` → one float32 vector: CLS token or mean over tokens, optionally L2-normed."""
    vec = hidden[0] if pooling == "cls" else hidden.mean(dim=0)
    if normalize:
        vec = torch.nn.functional.normalize(vec, dim=0)
    return vec.numpy().astype(np.float32, copy=False)
