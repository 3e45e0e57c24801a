"""Configuration of the ViT service (env ``VIT_*`` or flags of ``versus serve vit``)."""

from __future__ import annotations

import dataclasses

from services.common.config import OipServerConfig, setting
from services.common.errors import ConfigError
from services.vit.precision import CHOICES as PRECISIONS


@dataclasses.dataclass(frozen=True)
class VitConfig(OipServerConfig):
    """Everything ``versus serve vit`` can be told."""

    ENV_PREFIX = "VIT"

    port: int = setting(50051, "gRPC port; 0 picks a free port.")
    metrics_port: int = setting(9101, "Prometheus /metrics HTTP port; 0 picks a free port, -1 disables.")
    model: str = setting(
        "",
        "Model directory (save_pretrained layout, safetensors) or hub id; with --backend onnx a "
        "`versus export onnx` directory; with --backend triton a directory holding the processor config and "
        "config.json (the checkpoint, its export, or the Triton model directory) for preprocessing and labels.",
    )
    backend: str = setting(
        "torch",
        "What runs the network: 'torch' (eager, in process), 'onnx' (ONNX Runtime session in process) or "
        "'triton' (a Triton Inference Server; the service keeps validation, decoding and preprocessing).",
        choices=("torch", "onnx", "triton"),
    )
    model_id: str = setting("", "Id reported to clients; default: the directory name or hub id.")
    license: str = setting("apache-2.0", "License reported in GetModelInfo.")
    precision: str = setting(
        "auto",
        "Weights precision. 'auto': bf16 where the device computes it natively (CUDA; a CPU with avx512_bf16 "
        "or amx_bf16), else fp32. With --backend onnx/triton: the exported model's precision ('auto' or that "
        "one).",
        choices=PRECISIONS,
    )
    device: str = setting("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    torch_threads: int = setting(0, "torch intra-op threads; 0 keeps torch's default. Set it when pods share cores.")
    allow_download: bool = setting(False, "Allow fetching hub ids from the network (offline by default).")
    max_batch_size: int = setting(32, "Largest compute batch, in images.")
    max_wait_ms: float = setting(0.0, "Hold a non-full batch this long for more images; 0 = never wait.")
    max_queue: int = setting(256, "Images waiting for compute; beyond it requests get RESOURCE_EXHAUSTED.")
    max_images_per_request: int = setting(64, "Images in one Classify/Embed request.")
    max_image_pixels: int = setting(40_000_000, "Largest declared width x height (decompression-bomb guard).")
    min_image_side: int = setting(8, "Smallest accepted width or height, in pixels.")
    default_top_k: int = setting(5, "top_k used when a request leaves it 0.")
    preprocess_threads: int = setting(1, "Threads decoding and preprocessing images (preprocess=pool).")
    preprocess: str = setting(
        "pool",
        "Where images are decoded and preprocessed: 'pool' (own threads, before the image "
        "joins a batch) or 'device' (headers checked first, pixels decoded on the device thread "
        "per batch: no CPU contention with torch on small CPU machines).",
        choices=("pool", "device"),
    )
    stream_window: int = setting(64, "ClassifyStream items in flight per stream (back-pressure).")
    max_heads: int = setting(32, "Custom heads kept in memory.")
    max_head_examples: int = setting(4096, "Labelled images in one CreateHead request.")
    heads_dir: str = setting(
        "",
        "Directory where custom heads persist (one safetensors file each, written atomically), loaded at "
        "start and shared by replicas that mount it; empty keeps heads in memory only.",
    )
    heads_rescan_s: float = setting(
        10.0, "Seconds between re-reads of heads_dir for heads other replicas created or deleted (a lookup "
        "miss always re-reads).")
    onnx_threads: int = setting(0, "ONNX Runtime intra-op threads (--backend onnx); 0 = torch_threads when set, "
                                "else ONNX Runtime's default.")
    triton_url: str = setting("localhost:8001", "Triton Inference Server gRPC address (--backend triton).")
    triton_model: str = setting("vit", "Model name in the Triton repository (--backend triton).")
    triton_start_timeout_s: float = setting(
        300.0, "At start, seconds to wait for Triton's model to become ready before start-up fails.")
    triton_health_interval_s: float = setting(
        2.0, "Seconds between readiness checks of Triton's model; health is NOT_SERVING while it is not ready.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ConfigError(f"{self.label('model')} (--model) is required: a model directory or hub id")
        for name in (
            "max_batch_size",
            "max_queue",
            "max_images_per_request",
            "preprocess_threads",
            "stream_window",
            "default_top_k",
            "max_heads",
            "max_head_examples",
            "min_image_side",
            "max_image_pixels",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.label(name)} must be >= 1")
        for name in ("heads_rescan_s", "onnx_threads", "triton_start_timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.label(name)} must be >= 0")
        if self.triton_health_interval_s <= 0:
            raise ConfigError(f"{self.label('triton_health_interval_s')} must be > 0")
        if self.backend != "torch" and self.precision not in ("auto", "fp32", "int8"):
            raise ConfigError(f"{self.label('precision')}: the {self.backend} backend runs an exported fp32 or "
                              "int8 model; use 'auto' (the export's precision), 'fp32' or 'int8'")
        if self.max_wait_ms < 0:
            raise ConfigError(f"{self.label('max_wait_ms')} must be >= 0")
        if self.max_images_per_request > self.max_queue:
            raise ConfigError(f"{self.label('max_images_per_request')} must not exceed {self.label('max_queue')}")
