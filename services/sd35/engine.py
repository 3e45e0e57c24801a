"""One SD3.5 pipeline behind a small interface: load, generate (with step hooks), LoRA adapters.

Runs on the variant's single worker thread only (the service guarantees it), so a pipeline never
runs two calls at once and adapters are switched between calls, never during one. No gRPC here.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from services.torch_runtime import resolve_device, set_threads, watch_gpu_memory
from services.common.errors import ModelLoadError
from services.sd35.errors import AdapterNotFound

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


@dataclass(frozen=True)
class VariantSpec:
    """Defaults and limits of one variant."""

    name: str
    default_steps: int
    default_guidance: float
    min_pixels: int
    max_pixels: int
    skip_layers: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerationParams:
    """A validated request, defaults filled in."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    num_images: int
    max_sequence_length: int
    adapters: tuple[tuple[str, float], ...]
    output_format: str
    preview_every: int


@dataclass
class StepHooks:
    """Called from the worker thread after every denoising step. ``on_step`` may raise to stop."""

    on_step: Callable[[int, int, float], None]
    on_preview: Callable[[int, list[bytes]], None] | None = None


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    timings_ms: dict[str, float] = field(default_factory=dict)
    steps_run: int = 0


def encode_image(image: Image.Image, fmt: str, png_level: int = 1) -> bytes:
    """PIL image → file bytes (deterministic for a given image). PNG is lossless at every level;
    level 1 encodes a 1024x1024 image several times faster than PIL's default 6, for larger files."""
    buf = io.BytesIO()
    pil_format, _ = FORMATS[fmt]
    options = {"quality": 95} if pil_format in ("JPEG", "WEBP") else {"compress_level": png_level}
    image.save(buf, format=pil_format, **options)
    return buf.getvalue()


class Sd35Runner:
    """A StableDiffusion3Pipeline loaded from a directory (or built in memory, for benchmarks)."""

    def __init__(self, spec: VariantSpec, source: str, *, device: str = "auto", dtype: str = "auto",
                 cpu_offload: bool = False, drop_t5: bool = False, compile: bool = False, pipeline=None,  # noqa: ANN001
                 torch_threads: int = 0) -> None:
        self.spec = spec
        self.torch_threads = torch_threads
        self.source = source
        self.device = resolve_device(device)
        self.dtype_name = ("bf16" if self.device.type == "cuda" else "fp32") if dtype == "auto" else dtype
        self.cpu_offload = cpu_offload
        self.drop_t5 = drop_t5
        self.compile = compile
        self.pipe = pipeline
        self.parameters = 0
        self.adapters: dict[str, dict] = {}  # name → {"path", "rank", "size_bytes"}
        self._latent_rgb: torch.Tensor | None = None

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        from diffusers import StableDiffusion3Pipeline

        dtype = _DTYPES[self.dtype_name]
        set_threads(self.torch_threads)
        if self.pipe is None:
            path = Path(self.source)
            if not path.is_dir():
                raise ModelLoadError(f"{self.spec.name}: model directory {self.source} does not exist")
            if not any(path.rglob("*.safetensors")):
                raise ModelLoadError(f"{self.spec.name}: {self.source} holds no *.safetensors weights (pickle is refused)")
            extra = {"text_encoder_3": None, "tokenizer_3": None} if self.drop_t5 else {}
            try:
                self.pipe = StableDiffusion3Pipeline.from_pretrained(self.source, torch_dtype=dtype, use_safetensors=True,
                                                                     local_files_only=True, **extra)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"{self.spec.name}: cannot load {self.source}: {exc}") from exc
        pipe = self.pipe
        pipe.set_progress_bar_config(disable=True)
        if self.cpu_offload and self.device.type == "cuda":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if self.compile:
            pipe.transformer = torch.compile(pipe.transformer, fullgraph=False)
        self.parameters = sum(p.numel() for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
                              if getattr(pipe, name, None) is not None for p in getattr(pipe, name).parameters())
        self._latent_rgb = self._fit_latent_rgb()
        log.info("pipeline loaded", extra={"variant": self.spec.name, "device": str(self.device),
                                           "dtype": self.dtype_name, "parameters": self.parameters})

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    @property
    def max_side(self) -> int:
        """Largest width/height the transformer's position embedding covers."""
        cfg = self.pipe.transformer.config
        return int(cfg.pos_embed_max_size * cfg.patch_size * self.vae_scale)

    @property
    def num_layers(self) -> int:
        return int(self.pipe.transformer.config.num_layers)

    @torch.no_grad()
    def _fit_latent_rgb(self) -> torch.Tensor:
        """Least-squares 16→3 (+bias) map from denoising-space latents to RGB, fitted on the model's own
        VAE encoder with smooth random images, so previews cost one small matmul per step."""
        vae = self.pipe.vae
        gen = torch.Generator().manual_seed(0)
        size, scale = 64, self.vae_scale
        coarse = torch.rand(8, 3, 4, 4, generator=gen)
        images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        dev = next(vae.parameters()).device
        latents = vae.encode((images * 2 - 1).to(dev, vae.dtype)).latent_dist.mean.float().cpu()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        target = torch.nn.functional.avg_pool2d(images, scale)  # RGB 0..1 per latent pixel
        x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        y = target.permute(0, 2, 3, 1).reshape(-1, 3)
        return torch.linalg.lstsq(x, y).solution  # [17, 3]

    def preview(self, latents: torch.Tensor) -> list[bytes]:
        """Cheap RGB previews (latent resolution, PNG) of a batch of latents."""
        assert self._latent_rgb is not None
        lat = latents.detach().float().cpu()
        x = lat.permute(0, 2, 3, 1)
        rgb = torch.cat([x, torch.ones(*x.shape[:3], 1)], dim=-1) @ self._latent_rgb
        arr = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return [encode_image(Image.fromarray(a, "RGB"), "png") for a in arr]

    # -- adapters (worker thread) ---------------------------------------------------------------
    def load_adapter(self, name: str, file: Path) -> dict:
        from safetensors import safe_open

        with safe_open(str(file), "pt") as f:
            ranks = [f.get_slice(k).get_shape()[0] for k in f.keys() if "lora_A" in k or "lora_down" in k]
        self.pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=name)
        info = {"path": str(file), "rank": int(max(ranks, default=0)), "size_bytes": file.stat().st_size}
        self.adapters[name] = info
        return info

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise AdapterNotFound(f"adapter {name!r} is not loaded for {self.spec.name}")
        self.pipe.delete_adapters(name)
        del self.adapters[name]

    def _apply_adapters(self, adapters: tuple[tuple[str, float], ...]) -> None:
        # Per request, under the worker thread; never fuse_lora (other requests need the base weights).
        if adapters:
            self.pipe.enable_lora()
            self.pipe.set_adapters([n for n, _ in adapters], adapter_weights=[w for _, w in adapters])
        elif self.adapters:
            self.pipe.disable_lora()

    # -- generation (worker thread) -------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, p: GenerationParams, hooks: StepHooks | None = None) -> GenerationOutput:
        pipe = self.pipe
        timings: dict[str, float] = {}
        self._apply_adapters(p.adapters)
        cfg = p.guidance > 1.0
        t0 = time.perf_counter()
        embeds = pipe.encode_prompt(
            prompt=p.prompt, prompt_2=None, prompt_3=None, negative_prompt=p.negative_prompt or None,
            do_classifier_free_guidance=cfg, device=pipe._execution_device, num_images_per_prompt=p.num_images,
            max_sequence_length=p.max_sequence_length)
        timings["text_encoding_ms"] = (time.perf_counter() - t0) * 1e3
        gen_device = "cpu" if self.cpu_offload else self.device
        generators = [torch.Generator(gen_device).manual_seed(p.seed + i) for i in range(p.num_images)]
        out = GenerationOutput([])
        started = time.perf_counter()

        def on_step_end(_pipe, i, _t, kwargs):  # noqa: ANN001, ANN202
            out.steps_run = i + 1
            if hooks is not None:
                hooks.on_step(i + 1, p.steps, (time.perf_counter() - started) * 1e3)
                if hooks.on_preview and p.preview_every and (i + 1) % p.preview_every == 0 and i + 1 < p.steps:
                    hooks.on_preview(i + 1, self.preview(kwargs["latents"]))
            return {}

        skip = [l for l in self.spec.skip_layers if l < self.num_layers] if cfg else []
        latents = pipe(
            prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], pooled_prompt_embeds=embeds[2],
            negative_pooled_prompt_embeds=embeds[3], height=p.height, width=p.width, num_inference_steps=p.steps,
            guidance_scale=p.guidance, num_images_per_prompt=1, generator=generators,  # embeds already per image
            output_type="latent", callback_on_step_end=on_step_end, skip_guidance_layers=skip or None,
        ).images
        timings["denoising_ms"] = (time.perf_counter() - started) * 1e3
        t1 = time.perf_counter()
        vae = pipe.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        decoded = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        out.images = pipe.image_processor.postprocess(decoded, output_type="pil")
        timings["decode_ms"] = (time.perf_counter() - t1) * 1e3
        out.timings_ms = timings
        return out

    def warmup(self, side: int) -> None:
        """One real 2-step generation before SERVING, at the size the service defaults to (a compiled
        transformer would otherwise recompile on the first real request)."""
        lo = int(np.ceil(np.sqrt(self.spec.min_pixels) / 16) * 16)
        hi = int(np.sqrt(self.spec.max_pixels) // 16 * 16)
        side = min(max(side, lo, 16), hi, self.max_side)
        self.generate(GenerationParams("warm up", "", side, side, 2, self.spec.default_guidance, 0, 1, 77, (), "png", 0))
