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

import torch
from PIL import Image

from services.common.errors import ModelLoadError, quote
from services.common.hub import ModelSource, resolve_source
from services.sd35.adapters import AdapterInfo, os_error
from services.sd35.errors import AdapterNotFound, InvalidAdapter
from services.sd35.requests import FORMATS, GenerationParams
from services.sd35.variants import VariantSpec
from services.torch_runtime import resolve_device, set_threads

log = logging.getLogger(__name__)
_PIPELINE_LOGGER = "diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3"

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The pipeline's components a hub download fetches (not the repository's single-file checkpoints).
_HUB_PARTS = ("scheduler", "transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
_T5_PARTS = ("text_encoder_3", "tokenizer_3")


@dataclass
class StepHooks:
    """Called from the worker thread after every denoising step. ``on_step`` may raise to stop."""

    on_step: Callable[[int, int, float], None]
    on_preview: Callable[[int, list[bytes]], None] | None = None


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    timings_ms: dict[str, float] = field(default_factory=dict)


def encode_image(image: Image.Image, fmt: str, png_level: int = 1) -> bytes:
    """PIL image → file bytes (deterministic for a given image). PNG is lossless at every level;
    level 1 encodes a 1024x1024 image several times faster than PIL's default 6, for larger files; "raw"
    is the pixels themselves (RGB, row-major), for callers that decode anyway."""
    pil_format, _ = FORMATS[fmt]
    if pil_format == "RAW":  # width x height x 3 RGB bytes: nothing to encode
        return image.convert("RGB").tobytes()
    buf = io.BytesIO()
    options = {"quality": 95} if pil_format in ("JPEG", "WEBP") else {"compress_level": png_level}
    image.save(buf, format=pil_format, **options)
    return buf.getvalue()


class Sd35Runner:
    """A StableDiffusion3Pipeline loaded from a directory or a hub id's snapshot in the Hugging Face cache
    (or built in memory, for benchmarks)."""

    def __init__(self, spec: VariantSpec, source: str, *, device: str = "auto", dtype: str = "auto",
                 cpu_offload: bool = False, drop_t5: bool = False, compile: bool = False, pipeline=None,
                 torch_threads: int = 0, allow_download: bool = False) -> None:
        self.spec = spec
        self.torch_threads = torch_threads
        self.source = source
        self.allow_download = allow_download
        self.resolved: ModelSource | None = None  # the directory or hub snapshot the files come from
        self.device = resolve_device(device)
        self.dtype_name = ("bf16" if self.device.type == "cuda" else "fp32") if dtype == "auto" else dtype
        self.cpu_offload = cpu_offload
        self.drop_t5 = drop_t5
        self.compile = compile
        self.pipe = pipeline
        self.parameters = 0
        self.adapters: dict[str, AdapterInfo] = {}
        self._latent_rgb: torch.Tensor | None = None

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> None:
        from diffusers import StableDiffusion3Pipeline

        dtype = _DTYPES[self.dtype_name]
        set_threads(self.torch_threads)
        # diffusers logs the part of a prompt CLIP truncates, in full, at WARNING: client text in the log
        # on every long prompt. The truncation is documented (CLIP sees 77 tokens); log errors only.
        logging.getLogger(_PIPELINE_LOGGER).setLevel(logging.ERROR)
        if self.pipe is None:
            parts = _HUB_PARTS if self.drop_t5 else _HUB_PARTS + _T5_PARTS
            try:
                self.resolved = resolve_source(self.source, allow_download=self.allow_download,
                                               allow_patterns=["model_index.json", *(f"{p}/*" for p in parts)])
            except ModelLoadError as exc:
                raise ModelLoadError(f"{self.spec.name}: {exc.message}") from exc
            path = self.resolved.path
            if not any(path.rglob("*.safetensors")):
                raise ModelLoadError(f"{self.spec.name}: {self.source} holds no *.safetensors weights "
                                     "(pickle is refused)")
            extra = {"text_encoder_3": None, "tokenizer_3": None} if self.drop_t5 else {}
            try:
                self.pipe = StableDiffusion3Pipeline.from_pretrained(
                    path, torch_dtype=dtype, use_safetensors=True, local_files_only=True, **extra)
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
        components = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
        self.parameters = sum(p.numel() for name in components if getattr(pipe, name, None) is not None
                              for p in getattr(pipe, name).parameters())
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

    @property
    def skip_layers(self) -> tuple[int, ...]:
        """The variant's skip-layer-guidance layers that this transformer has (tiny models have fewer)."""
        return tuple(layer for layer in self.spec.skip_layers if layer < self.num_layers)

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
    def load_adapter(self, info: AdapterInfo, file: Path) -> None:
        """Load a LoRA file (already checked by ``adapters.inspect``) under ``info.name``.

        The file is the client's choice, so whatever the LoRA loaders raise on it (shapes that do not fit,
        missing halves, keys for no module) is the client's INVALID_ARGUMENT, and the pipeline is left as
        it was. Running out of memory stays a server error.
        """
        try:
            self.pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=info.name)
        except (MemoryError, torch.OutOfMemoryError):
            self._forget_adapter(info.name)
            raise
        except OSError as exc:  # the file changed after the checks
            self._forget_adapter(info.name)
            raise os_error(exc, info.path) from exc
        except Exception as exc:  # noqa: BLE001 - the loaders' many exception types, on client-chosen input
            self._forget_adapter(info.name)
            first_line = (str(exc).strip().splitlines() or [""])[0][:160]
            raise InvalidAdapter("path", f"is not a LoRA for {self.spec.name} ({type(exc).__name__}: "
                                         f"{first_line})") from exc
        if not any(info.name in names for names in self.pipe.get_list_adapters().values()):
            self._forget_adapter(info.name)  # e.g. an empty state dict loads "successfully" into nothing
            raise InvalidAdapter("path", f"holds no LoRA weights that {self.spec.name}'s modules use")
        self.adapters[info.name] = info

    def _forget_adapter(self, name: str) -> None:
        self.pipe.delete_adapters(name)  # a no-op for names no component has

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise AdapterNotFound(f"adapter {quote(name)} is not loaded for {self.spec.name}", resource_type="adapter",
                                  resource_name=name)
        self.pipe.delete_adapters(name)
        del self.adapters[name]

    def _apply_adapters(self, adapters: tuple[tuple[str, float], ...]) -> None:
        # Per request, under the worker thread; never fuse_lora (other requests need the base weights).
        missing = [name for name, _ in adapters if name not in self.adapters]
        if missing:  # unloaded while the request waited in the queue
            raise AdapterNotFound(f"adapter {quote(missing[0])} was unloaded from {self.spec.name} before the request "
                                  "started", resource_type="adapter", resource_name=missing[0])
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

        def on_step_end(_pipe, i, _t, kwargs):
            if hooks is not None:
                hooks.on_step(i + 1, p.steps, (time.perf_counter() - started) * 1e3)
                if hooks.on_preview and p.preview_every and (i + 1) % p.preview_every == 0 and i + 1 < p.steps:
                    hooks.on_preview(i + 1, self.preview(kwargs["latents"]))
            return {}

        skip = list(self.skip_layers) if cfg else []
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

    def warmup(self, side: int) -> float:
        """One real 2-step generation before SERVING, at the size the service defaults to (a compiled
        transformer would otherwise recompile on the first real request). Returns its seconds per
        megapixel-step, the first figure of the queue's wait estimate."""
        side = self.spec.fit_side(side, self.max_side)
        params = GenerationParams("warm up", "", side, side, 2, self.spec.default_guidance, 0, 1, 77, (), "png", 0)
        started = time.perf_counter()
        self.generate(params)
        return (time.perf_counter() - started) / params.work_units
