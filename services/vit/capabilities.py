"""What the ViT service says it can do (GetModelInfo's capabilities; no gRPC)."""

from __future__ import annotations

from services.common.backend import Capability

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

