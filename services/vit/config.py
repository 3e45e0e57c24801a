"""Configuration of the ViT service (env ``VIT_*`` or flags of ``versus serve vit``)."""

from __future__ import annotations

import dataclasses

from services.common.config import ServerConfig, setting
from services.common.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class VitConfig(ServerConfig):
    """Everything ``versus serve vit`` can be told."""

    ENV_PREFIX = "VIT"

    port: int = setting(50051, "gRPC port; 0 picks a free port.")
    metrics_port: int = setting(9101, "Prometheus /metrics HTTP port; 0 picks a free port, -1 disables.")
    model: str = setting("", "Model directory (save_pretrained layout, safetensors) or hub id.")
    model_id: str = setting("", "Id reported to clients; default: the directory name or hub id.")
    license: str = setting("apache-2.0", "License reported in GetModelInfo.")
    precision: str = setting("fp32", "Weights precision.", choices=("fp32", "bf16", "fp16", "int8"))
    device: str = setting("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ConfigError(f"{self.env_name('model')} (--model) is required: a model directory or hub id")
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
                raise ConfigError(f"{self.env_name(name)} must be >= 1")
        if self.max_wait_ms < 0:
            raise ConfigError(f"{self.env_name('max_wait_ms')} must be >= 0")
        if self.max_images_per_request > self.max_queue:
            raise ConfigError(f"{self.env_name('max_images_per_request')} must not exceed {self.env_name('max_queue')}")
