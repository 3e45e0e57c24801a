"""ViT on eager torch: a ViTForImageClassification checkpoint on the device thread (the :class:`Engine`
contract's in-process engine; no gRPC, no batching).

Loading is the real ``from_pretrained`` path (safetensors only; pickle checkpoints are refused) with the
precision and device asked for.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import torch

from services.common.errors import ConfigError, ModelLoadError
from services.torch_runtime import resolve_device, set_threads
from services.vit.engine import ONNX_FILE, ForwardOutput, LocalEngine
from services.vit.errors import NoClassifier, PickleCheckpointRefused
from services.vit.precision import auto_precision, cpu_flags

log = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


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


class TorchEngine(LocalEngine):
    """Eager torch: a ViTForImageClassification checkpoint."""

    backend = "torch"

    def __init__(self, source: str, *, precision: str = "auto", device: str = "auto",
                 allow_download: bool = False, torch_threads: int = 0, executor: Executor | None = None) -> None:
        super().__init__(source, precision=precision, allow_download=allow_download, executor=executor)
        self.device = resolve_device(device)
        self.torch_threads = torch_threads
        self.model: torch.nn.Module | None = None

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
