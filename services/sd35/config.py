"""Configuration of the SD3.5 service (env ``SD35_*`` or flags of ``versus serve sd35``)."""

from __future__ import annotations

import dataclasses

from services.common.config import OipServerConfig, setting
from services.common.errors import ConfigError
from services.sd35.variants import VARIANTS


@dataclasses.dataclass(frozen=True)
class Sd35Config(OipServerConfig):
    """Everything ``versus serve sd35`` can be told."""

    ENV_PREFIX = "SD35"

    torch_threads: int = setting(0, "torch intra-op threads; 0 keeps torch's default. Set it when pods share cores.")
    port: int = setting(50052, "gRPC port; 0 picks a free port.")
    metrics_port: int = setting(9102, "Prometheus /metrics HTTP port; 0 picks a free port, -1 disables.")
    models: tuple[str, ...] = setting((), "Hosted variants as VARIANT=DIR or VARIANT=ORG/NAME (a hub id, read from "
                                          "the Hugging Face cache; variants: large, large-turbo, medium).",
                                      flag="model")
    allow_download: bool = setting(False, "Allow fetching hub ids into the Hugging Face cache (offline by default).")
    default_variant: str = setting("", "Variant used when a request leaves it unset; default: the first hosted.")
    precision: str = setting("auto", "Weights precision; auto = bf16 on CUDA, fp32 on CPU.",
                             choices=("auto", "fp32", "bf16", "fp16"), deprecated=("dtype",))
    device: str = setting("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    cpu_offload: bool = setting(False, "enable_model_cpu_offload: keep only the running component on the GPU.")
    drop_t5: bool = setting(False, "Load without the T5 text encoder (saves ~9 GB in bf16; weaker prompt following).")
    compile: bool = setting(False, "torch.compile the transformer (slow first call, faster steps).")
    adapter_root: str = setting("", "Directory LoadAdapter may read LoRA .safetensors files from; empty disables it.")
    max_adapters: int = setting(16, "Adapters loaded per variant.")
    max_queue: int = setting(8, "Requests waiting per variant; beyond it RESOURCE_EXHAUSTED.")
    max_prompt_chars: int = setting(2000, "Longest prompt or negative prompt, in characters.")
    default_size: int = setting(1024, "Width and height when a request leaves them 0.")
    max_pixels_large: int = setting(1_048_576, "Pixel budget of Large and Large Turbo (width x height).")
    min_pixels_medium: int = setting(65_536, "Smallest image of Medium (width x height).")
    max_pixels_medium: int = setting(2_097_152, "Pixel budget of Medium (width x height).")
    png_compress_level: int = setting(1, "PNG zlib level 0-9 (lossless at every level; 1 is fast, 6+ smaller and "
                                         "slower).")
    encode_threads: int = setting(2, "Threads encoding result images (off the GPU worker, overlapping the next job).")
    license: str = setting("stabilityai-ai-community", "License reported in GetModelInfo.")

    def __post_init__(self) -> None:
        super().__post_init__()
        seen = self._check_models()
        if self.default_variant and self.default_variant not in seen:
            raise ConfigError(f"{self.label('default_variant')}: {self.default_variant!r} is not hosted")
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigError(f"{self.label('png_compress_level')} must be 0..9")
        for name in ("max_adapters", "max_queue", "max_prompt_chars", "default_size", "encode_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.label(name)} must be >= 1")
        if self.default_size % 16:
            raise ConfigError(f"{self.label('default_size')} must be a multiple of 16")

    def _check_models(self) -> set[str]:
        """The hosted variants, after checking each ``VARIANT=DIR``."""
        if not self.models:
            raise ConfigError(f"{self.label('models')} is required: VARIANT=DIR, repeatable")
        seen: set[str] = set()
        for item in self.models:
            variant, sep, path = item.partition("=")
            if not sep or not path:
                raise ConfigError(f"{self.label('models')}: {item!r} is not VARIANT=DIR")
            if variant not in VARIANTS:
                raise ConfigError(f"{self.label('models')}: unknown variant {variant!r}; use {', '.join(VARIANTS)}")
            if variant in seen:
                raise ConfigError(f"{self.label('models')}: variant {variant!r} given twice")
            seen.add(variant)
        return seen

    def model_dirs(self) -> dict[str, str]:
        """variant → directory, in the order given."""
        return dict(item.split("=", 1) for item in self.models)
