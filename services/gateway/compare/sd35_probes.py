"""Live probes of one SD3.5 variant: generations that turn its claims into observations (judged by the
checks in :mod:`services.gateway.compare.checks`)."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass

from PIL import Image
from versus.gateway.v1 import gateway_pb2
from versus.sd35.v1 import sd35_pb2

from services.common.convert import enum_value
from services.gateway.compare.probes import (
    CLEANUP_TIMEOUT_S,
    Budget,
    ProbeResult,
    cleanup,
    digest_bytes,
    expect,
    measurement,
    now_iso,
    unavailable,
)
from services.gateway.downstream import Downstream, DownstreamError

#: Two prompts identical in their first 77 CLIP tokens (80 one-token words: CLIP truncates inside them) and
#: different after: only a third encoder that reads further (T5, asked for T5_TOKENS tokens) can tell them
#: apart. Short words keep the tail inside T5's limit even for a character-level tokenizer.
_LONG = " ".join(["fox"] * 80)
T5_PROMPTS = (f"{_LONG}, under a full moon at night", f"{_LONG}, in bright morning sunshine with snow")
T5_TOKENS = 512


@dataclass
class VariantInfo:
    name: str  # "large", "large-turbo", "medium"
    info: sd35_pb2.VariantInfo
    weights: gateway_pb2.ServedWeights


def variant_enum(name: str) -> int:
    return enum_value(sd35_pb2.Variant, "VARIANT", name)


@dataclass
class Generated:
    png: bytes
    width: int
    height: int
    steps: int
    seed: int
    total_ms: float
    decoded: tuple[int, int]


class Sd35Probes:
    """Probes of one SD3.5 variant. Each only observes."""

    def __init__(self, downstream: Downstream, variant: VariantInfo, budget: Budget, size: int = 0,
                 steps: int = 0) -> None:
        self.ds = downstream
        self.v = variant
        self.budget = budget
        self.w = variant.weights
        self.size = size or variant.info.default_width
        self.steps = steps

    async def generate(self, prompt: str, seed: int, *, size: int = 0, steps: int = 0, guidance: float | None = None,
                       negative: str = "", adapters: tuple[tuple[str, float], ...] = (),
                       max_sequence_length: int = 0) -> Generated:
        """One image; a reply without one, or whose bytes do not decode, breaks the contract."""
        side = size or self.size
        req = sd35_pb2.GenerateRequest(prompt=prompt, negative_prompt=negative, variant=variant_enum(self.v.name),
                                       width=side, height=side, seed=seed, max_sequence_length=max_sequence_length,
                                       output_format=sd35_pb2.OUTPUT_FORMAT_PNG)
        if steps or self.steps:
            req.steps = steps or self.steps
        if guidance is not None:
            req.guidance_scale = guidance
        for adapter, weight in adapters:
            req.adapters.add(name=adapter, weight=weight)
        t0 = time.perf_counter()
        events = await self.ds.stream("sd35", "Generate", req, self.budget.timeout())
        result = next((e.result for e in events if e.WhichOneof("event") == "result"), None)
        expect(result is not None and len(result.images) == 1 and len(result.seeds) == 1,
               f"Generate of one image ended with {len(result.images) if result else 'no'} result images")
        png = result.images[0].data
        with Image.open(io.BytesIO(png)) as img:  # OSError when the bytes are not an image: a fault
            img.load()
            decoded = img.size
        return Generated(png, result.width, result.height, result.steps, result.seeds[0],
                         (time.perf_counter() - t0) * 1e3, decoded)

    async def size_and_determinism(self) -> ProbeResult:
        """An image of the requested size; the same request twice."""
        name, at = f"sd35.{self.v.name}.generate", now_iso()
        prompt = "a photo of a lighthouse at dusk"
        first = await self.generate(prompt, 7)
        second = await self.generate(prompt, 7)
        same = first.png == second.png
        data = {"requested": [self.size, self.size], "decoded": list(first.decoded),
                "reported": [first.width, first.height], "deterministic": same, "steps": first.steps,
                "ms": first.total_ms, "resolution": self.size, "batch": 1}
        detail = (f"Generate '{prompt}' at {self.size}x{self.size}, seed 7, {first.steps} steps: decoded a "
                  f"{first.decoded[0]}x{first.decoded[1]} PNG (the reply says {first.width}x{first.height}) in "
                  f"{first.total_ms:.0f} ms; the same request again gave "
                  f"{'byte-identical' if same else 'DIFFERENT'} bytes (sha256 {digest_bytes(first.png)})")
        return ProbeResult(name, detail, [
            measurement("generate_ms", first.total_ms, "ms", name,
                        f"one {self.size}x{self.size} image, {first.steps} steps", self.w, at),
            measurement("image_side_px", first.decoded[0], "px", name, "decoded width of the returned PNG", self.w, at),
            *([measurement("default_steps", first.steps, "steps", name, "steps the variant runs when the request "
                           "leaves them unset", self.w, at)] if not self.steps else []),
        ], data, self.w, at)

    async def guidance(self) -> ProbeResult:
        """Classifier-free guidance and negative prompts (same seed)."""
        name, at = f"sd35.{self.v.name}.guidance", now_iso()
        prompt = "a red bicycle"
        plain = await self.generate(prompt, 11, guidance=0.0)
        guided = await self.generate(prompt, 11, guidance=4.5)
        negative = await self.generate(prompt, 11, guidance=4.5, negative="blurry, dark")
        data = {"guidance_changes": plain.png != guided.png, "negative_changes": guided.png != negative.png}
        detail = (f"seed 11, guidance 0 vs 4.5: {'different' if data['guidance_changes'] else 'IDENTICAL'} images; "
                  f"adding a negative prompt: {'different' if data['negative_changes'] else 'IDENTICAL'}")
        return ProbeResult(name, detail, [], data, self.w, at)

    async def _edge(self, side: int) -> tuple[str, str]:
        """(what happened, the refusal's fields) for one 1-step square generation of ``side``."""
        try:
            g = await self.generate("a wide landscape", 3, size=side, steps=1)
        except DownstreamError as exc:
            if exc.details.code.name != "INVALID_ARGUMENT":
                raise  # an outage says nothing about the limits (a fault is judged by guarded)
            return "INVALID_ARGUMENT", ",".join(f for f, _ in exc.details.violations)
        return f"{g.decoded[0]}x{g.decoded[1]}", ""

    async def resolution_edges(self) -> ProbeResult:
        """Both pixel edges: the smallest and the largest square the variant advertises generate (1 step); one
        step beyond each, and a side that is not a multiple of 16, are refused naming the field."""
        name, at, info = f"sd35.{self.v.name}.resolution", now_iso(), self.v.info
        max_side = math.isqrt(info.max_pixels) // 16 * 16
        if info.max_side:
            max_side = min(max_side, info.max_side)
        min_side = max(16, math.ceil(math.sqrt(info.min_pixels) / 16) * 16)
        accept = {side: await self._edge(side) for side in dict.fromkeys((min_side, max_side))}
        beyond = [max_side + 16, max_side - 8] + ([min_side - 16] if info.min_pixels and min_side > 16 else [])
        refuse = {side: await self._edge(side) for side in beyond}
        data = {"min_side": min_side, "max_side": max_side, "accepted": {str(k): v[0] for k, v in accept.items()},
                "refused": {str(k): list(v) for k, v in refuse.items()}, "resolution": max_side}
        detail = (f"advertised {info.min_pixels}..{info.max_pixels} pixels (max side {info.max_side or 'unset'}): "
                  + "; ".join(f"{s}x{s} at 1 step → {got}" for s, (got, _) in accept.items()) + "; "
                  + "; ".join(f"{s}x{s} → {got} ({fields or 'no field'})" for s, (got, fields) in refuse.items()))
        return ProbeResult(name, detail, [
            measurement("max_side_px", max_side, "px", name, "largest square inside the advertised limits", self.w, at),
            measurement("min_side_px", min_side, "px", name, "smallest square inside the advertised limits", self.w,
                        at),
        ], data, self.w, at)

    async def t5(self) -> ProbeResult:
        """Two prompts identical in their first 77 CLIP tokens and different after, same seed."""
        name, at = f"sd35.{self.v.name}.t5", now_iso()
        a = await self.generate(T5_PROMPTS[0], 13, steps=2, max_sequence_length=T5_TOKENS)
        b = await self.generate(T5_PROMPTS[1], 13, steps=2, max_sequence_length=T5_TOKENS)
        t5 = self.v.info.model.properties.get("text_encoder_3", "")
        data = {"differ": a.png != b.png, "t5_reported": t5}
        detail = (f"two {len(T5_PROMPTS[0].split())}-word prompts identical in their first 77 CLIP tokens and "
                  f"different after, max_sequence_length {T5_TOKENS}, seed 13, 2 steps: "
                  f"{'different' if data['differ'] else 'IDENTICAL'} images "
                  f"(the service reports text_encoder_3={t5 or 'nothing'})")
        return ProbeResult(name, detail, [], data, self.w, at)

    async def lora(self, load_path: str) -> ProbeResult:
        """A LoRA's effect; generating without it again."""
        name, at = f"sd35.{self.v.name}.lora", now_iso()
        listed = await self.ds.call("sd35", "ListAdapters", sd35_pb2.ListAdaptersRequest(), self.budget.timeout())
        mine = [a for a in listed.adapters if a.variant == variant_enum(self.v.name)]
        loaded_here = ""
        if not mine:
            if not load_path:
                return unavailable(name, "no LoRA adapter is loaded for this variant and none is configured "
                                         "(GATEWAY_LORA_PROBE_PATH)", self.w)
            loaded_here = "versus-probe-lora"
            await self.ds.call("sd35", "LoadAdapter", sd35_pb2.LoadAdapterRequest(
                name=loaded_here, path=load_path, variant=variant_enum(self.v.name)), self.budget.timeout())
        adapter = mine[0].name if mine else loaded_here
        try:
            base = await self.generate("a watercolor fox", 5)
            styled = await self.generate("a watercolor fox", 5, adapters=((adapter, 1.0),))
            again = await self.generate("a watercolor fox", 5)
        finally:  # never leave the probe's adapter loaded (it holds one of the variant's adapter slots)
            if loaded_here:
                await cleanup(self.ds.call("sd35", "UnloadAdapter", sd35_pb2.UnloadAdapterRequest(
                    name=loaded_here, variant=variant_enum(self.v.name)), CLEANUP_TIMEOUT_S))
        data = {"adapter": adapter, "changed": styled.png != base.png, "restored": again.png == base.png}
        changed = "changed" if data["changed"] else "UNCHANGED"
        restored = "byte-identical to the base" if data["restored"] else "DIFFERENT from the base"
        detail = f"adapter '{adapter}' at weight 1.0, seed 5: output {changed}; without it again: {restored}"
        return ProbeResult(name, detail, [], data, self.w, at)
