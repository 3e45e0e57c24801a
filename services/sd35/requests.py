"""Generate requests and events in domain terms, the limits they must respect, and their validation.

No torch and no gRPC. Every limit a client can hit is a name here; ``sd35.proto`` and docs/SD35.md
state the same numbers. Validation collects every bad field of a request into one INVALID_ARGUMENT
(``google.rpc.BadRequest`` with one violation per field), so a client fixes them all at once.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass

from services.common.errors import InvalidArgument, quote
from services.sd35.errors import AdapterNotFound
from services.sd35.variants import VariantSpec

#: Width and height are multiples of this (the VAE's 8× and the transformer's 2× patches).
SIZE_MULTIPLE = 16
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_IMAGES = 4
#: T5 tokens; CLIP always truncates at 77.
MAX_SEQUENCE_LENGTH = 512
DEFAULT_SEQUENCE_LENGTH = 256
#: Seeds are 0..MAX_SEED (negative seeds are refused): image i uses seed + i, which must stay an int64.
MAX_SEED = 2**63 - 1 - MAX_IMAGES
MAX_PREVIEW_EVERY = 100
#: LoRA scale per adapter (1 = as trained).
MAX_ADAPTER_WEIGHT = 4.0
#: Adapter names: 1..64 of ``[A-Za-z0-9_-]`` (no dots: peft keys modules by adapter name).
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ADAPTER_NAME_RULE = "must be 1..64 characters of [A-Za-z0-9_-]"
#: Output formats: name → (PIL format, MIME type).
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp"),
           "raw": ("RAW", "application/x-raw-rgb")}


@dataclass(frozen=True)
class Request:
    """A Generate request as the servicer hands it over (unset optionals are None, unset ints 0)."""

    prompt: str
    negative_prompt: str = ""
    variant: str = ""
    width: int = 0
    height: int = 0
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    num_images: int = 0
    max_sequence_length: int = 0
    adapters: tuple[tuple[str, float], ...] = ()
    output_format: str = "png"
    preview_every: int = 0


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

    @property
    def work_units(self) -> float:
        """Denoising work in megapixel-steps, the unit of the queue's wait estimate."""
        return self.steps * self.num_images * self.width * self.height / 2**20


@dataclass(frozen=True)
class Limits:
    """The service-wide limits that come from the config."""

    default_size: int
    max_prompt_chars: int


# -- events ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Queued:
    position: int


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    elapsed_ms: float


@dataclass(frozen=True)
class Preview:
    step: int
    images: list[bytes]


@dataclass(frozen=True)
class Result:
    images: list[bytes]
    mime_type: str
    seeds: list[int]
    variant: str
    steps: int
    guidance: float
    width: int
    height: int
    timings_ms: dict[str, float]


Event = Queued | Progress | Preview | Result


# -- validation --------------------------------------------------------------------------------------
def check_adapter_name(name: str, field: str) -> None:
    """INVALID_ARGUMENT unless ``name`` fits :data:`ADAPTER_NAME` (checked before any lookup, so an
    over-long name never reaches a message or a dictionary)."""
    if not ADAPTER_NAME.fullmatch(name):
        raise InvalidArgument(field, f"{ADAPTER_NAME_RULE}, got {quote(name)}")


def _in_range(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


def _text(r: Request, limits: Limits) -> list[tuple[str, str]]:
    bad = []
    if not r.prompt.strip():
        bad.append(("prompt", "must not be empty"))
    for field, text in (("prompt", r.prompt), ("negative_prompt", r.negative_prompt)):
        if len(text) > limits.max_prompt_chars:
            bad.append((field, f"{len(text)} characters exceed the limit of {limits.max_prompt_chars}"))
    return bad


def _size(width: int, height: int, spec: VariantSpec, max_side: int) -> list[tuple[str, str]]:
    bad = []
    for field, side in (("width", width), ("height", height)):
        if side < SIZE_MULTIPLE or side % SIZE_MULTIPLE:
            bad.append((field, f"{side} must be a positive multiple of {SIZE_MULTIPLE}"))
        elif side > max_side:
            bad.append((field, f"{side} exceeds the model's largest side {max_side}"))
    pixels = width * height
    if not bad and not spec.min_pixels <= pixels <= spec.max_pixels:
        problem = (f"{width}x{height} = {pixels} px is outside {spec.name}'s budget "
                   f"{spec.min_pixels}..{spec.max_pixels} px")
        bad += [("width", problem), ("height", problem)]
    return bad


def _sampling(r: Request, steps: int, guidance: float, seed: int) -> list[tuple[str, str]]:
    checks = (
        ("steps", _in_range(steps, 1, MAX_STEPS), f"must be 1..{MAX_STEPS}, got {steps}"),
        ("guidance_scale", _in_range(guidance, 0.0, MAX_GUIDANCE), f"must be 0..{MAX_GUIDANCE:g}, got {guidance}"),
        ("seed", 0 <= seed <= MAX_SEED, f"must be 0..{MAX_SEED} (negative seeds are refused), got {seed}"),
        ("num_images", 0 <= r.num_images <= MAX_IMAGES, f"must be 1..{MAX_IMAGES} (0 = 1), got {r.num_images}"),
        ("max_sequence_length", 0 <= r.max_sequence_length <= MAX_SEQUENCE_LENGTH,
         f"must be 1..{MAX_SEQUENCE_LENGTH} (0 = {DEFAULT_SEQUENCE_LENGTH}), got {r.max_sequence_length}"),
        ("output_format", r.output_format in FORMATS, f"must be one of {', '.join(FORMATS)}"),
        ("preview_every", 0 <= r.preview_every <= MAX_PREVIEW_EVERY,
         f"must be 0..{MAX_PREVIEW_EVERY}, got {r.preview_every}"),
    )
    return [(field, problem) for field, ok, problem in checks if not ok]


def _adapters(r: Request) -> list[tuple[str, str]]:
    bad = []
    for i, (name, weight) in enumerate(r.adapters):
        if not ADAPTER_NAME.fullmatch(name):
            bad.append((f"adapters[{i}].name", f"{ADAPTER_NAME_RULE}, got {quote(name)}"))
        if not _in_range(weight, -MAX_ADAPTER_WEIGHT, MAX_ADAPTER_WEIGHT):
            bad.append((f"adapters[{i}].weight", f"must be -{MAX_ADAPTER_WEIGHT:g}..{MAX_ADAPTER_WEIGHT:g}, "
                                                 f"got {weight}"))
    names = [n for n, _ in r.adapters]
    if len(set(names)) != len(names):
        bad.append(("adapters", "names an adapter twice"))
    return bad


def validate(r: Request, spec: VariantSpec, max_side: int, limits: Limits, loaded: Collection[str]) -> GenerationParams:
    """Defaults filled in, or INVALID_ARGUMENT listing every bad field; NOT_FOUND for an adapter that is
    not loaded for this variant (``loaded``: the names that are)."""
    side = spec.fit_side(limits.default_size, max_side)  # the default, inside this variant's pixel budget
    width, height = r.width or side, r.height or side
    steps = spec.default_steps if r.steps is None else r.steps
    guidance = spec.default_guidance if r.guidance is None else r.guidance
    seed = secrets.randbelow(MAX_SEED + 1) if r.seed is None else r.seed
    bad = [*_text(r, limits), *_size(width, height, spec, max_side), *_sampling(r, steps, guidance, seed),
           *_adapters(r)]
    if bad:
        (field, problem), *more = bad
        raise InvalidArgument(field, problem, more=more)
    for i, (name, _) in enumerate(r.adapters):
        if name not in loaded:
            raise AdapterNotFound(f"adapters[{i}].name: adapter {quote(name)} is not loaded for {spec.name}",
                                  resource_type="adapter", resource_name=name)
    return GenerationParams(r.prompt, r.negative_prompt, width, height, steps, guidance, seed, r.num_images or 1,
                            r.max_sequence_length or DEFAULT_SEQUENCE_LENGTH, tuple(r.adapters), r.output_format,
                            r.preview_every)
