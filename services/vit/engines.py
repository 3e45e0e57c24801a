"""Which engine runs the network, and what the ViT service says it can do (no gRPC)."""

from __future__ import annotations

from services.common.backend import Capability
from services.vit.config import VitConfig
from services.vit.model import VitEngine, VitModel

CAPABILITIES = (
    Capability(
        "image-classification", "Image classification", "Top-k labels with softmax scores over the model's id2label."
    ),
    Capability(
        "image-embeddings",
        "Image embeddings",
        "CLS or mean-pooled vectors from any hidden layer, optionally L2-normalised.",
    ),
    Capability(
        "batch-inference",
        "Batch inference",
        "Dynamic micro-batching across concurrent requests, plus a bidirectional bulk stream.",
    ),
    Capability(
        "custom-heads", "Custom heads", "Linear probes trained on the model's embeddings from labelled examples."
    ),
    Capability(
        "safetensors-loading",
        "Safetensors loading",
        "from_pretrained on a directory or hub id; pickle checkpoints refused.",
    ),
    Capability(
        "quantization",
        "Reduced precision",
        "fp32, bf16/fp16 and dynamic int8 quantization of Linear layers; int8 ONNX Runtime exports.",
    ),
    Capability(
        "onnx-export",
        "ONNX export",
        "versus export onnx: one ONNX file with a dynamic batch axis, parity-checked against torch.",
    ),
    Capability(
        "backends", "Execution backends", "Eager torch, ONNX Runtime in process, or a Triton Inference Server."
    ),
)


def make_engine(config: VitConfig) -> VitEngine:
    """The engine for ``config.backend`` (ONNX Runtime and tritonclient are imported only when chosen)."""
    if config.backend == "onnx":
        from services.vit.onnx_engine import OnnxVitModel

        return OnnxVitModel(config.model, precision=config.precision, device=config.device,
                            threads=config.onnx_threads or config.torch_threads)
    if config.backend == "triton":
        from services.vit.triton_engine import TritonVitModel

        return TritonVitModel(config.model, url=config.triton_url, model_name=config.triton_model,
                              precision=config.precision, allow_download=config.allow_download)
    return VitModel(config.model, precision=config.precision, device=config.device,
                    allow_download=config.allow_download, torch_threads=config.torch_threads)
