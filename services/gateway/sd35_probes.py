"""Live probes of one SD3.5 variant: generations that turn its claims into observations."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass

import grpc
from PIL import Image
from versus.gateway.v1 import gateway_pb2
from versus.sd35.v1 import sd35_pb2

from services.common.client import ErrorDetails
from services.common.convert import enum_value
from services.gateway.downstream import Downstream, DownstreamError
from services.gateway.probes import (
    CLEANUP_TIMEOUT_S,
    Budget,
    ProbeResult,
    cleanup,
    digest_bytes,
    measurement,
    now_iso,
    unavailable,
)


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


class Sd35Probes:
    """Probes of one SD3.5 variant."""

    def __init__(self, downstream: Downstream, variant: VariantInfo, budget: Budget, size: int = 0,
                 steps: int = 0) -> None:
        self.ds = downstream
        self.v = variant
        self.budget = budget
        self.w = variant.weights
        self.size = size or variant.info.default_width
        self.steps = steps

    async def generate(self, prompt: str, seed: int, *, size: int = 0, steps: int = 0, guidance: float | None = None,
                       negative: str = "", adapters: tuple[tuple[str, float], ...] = ()) -> Generated:
        side = size or self.size
        req = sd35_pb2.GenerateRequest(prompt=prompt, negative_prompt=negative, variant=variant_enum(self.v.name),
                                       width=side, height=side, seed=seed,
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
        if result is None or not result.images:
            raise DownstreamError("sd35", ErrorDetails(grpc.StatusCode.UNKNOWN, "Generate ended without an image",
                                                       reason="NO_RESULT"))
        return Generated(result.images[0].data, result.width, result.height, result.steps, result.seeds[0],
                         (time.perf_counter() - t0) * 1e3)

    async def size_and_determinism(self) -> ProbeResult:
        """An image of the requested size; the same request twice gives the same bytes."""
        name, at = f"sd35.{self.v.name}.generate", now_iso()
        prompt = "a photo of a lighthouse at dusk"
        first = await self.generate(prompt, 7)
        second = await self.generate(prompt, 7)
        with Image.open(io.BytesIO(first.png)) as img:
            decoded = img.size
        ok_size = decoded == (self.size, self.size) == (first.width, first.height)
        same = first.png == second.png
        detail = (f"Generate '{prompt}' at {self.size}x{self.size}, seed 7, {first.steps} steps: decoded a "
                  f"{decoded[0]}x{decoded[1]} PNG in {first.total_ms:.0f} ms; the same request again gave "
                  f"{'byte-identical' if same else 'DIFFERENT'} bytes (sha256 {digest_bytes(first.png)})")
        return ProbeResult(name, ok_size and same, detail, [
            measurement("generate_ms", first.total_ms, "ms", name,
                        f"one {self.size}x{self.size} image, {first.steps} steps", self.w, at),
            measurement("image_side_px", decoded[0], "px", name, "decoded width of the returned PNG", self.w, at),
            *([measurement("default_steps", first.steps, "steps", name, "steps the variant runs when the request "
                           "leaves them unset", self.w, at)] if not self.steps else []),
        ], {"size_ok": ok_size, "deterministic": same, "steps": first.steps, "ms": first.total_ms,
            "ms_per_step": first.total_ms / max(1, first.steps)}, self.w, at)

    async def guidance(self) -> ProbeResult:
        """Classifier-free guidance and negative prompts change the output (same seed)."""
        name, at = f"sd35.{self.v.name}.guidance", now_iso()
        prompt = "a red bicycle"
        plain = await self.generate(prompt, 11, guidance=0.0)
        guided = await self.generate(prompt, 11, guidance=4.5)
        negative = await self.generate(prompt, 11, guidance=4.5, negative="blurry, dark")
        ok = plain.png != guided.png and guided.png != negative.png
        detail = (f"seed 11, guidance 0 vs 4.5: {'different' if plain.png != guided.png else 'IDENTICAL'} images; "
                  f"adding a negative prompt: {'different' if guided.png != negative.png else 'IDENTICAL'}")
        return ProbeResult(name, ok, detail, [], {}, self.w, at)

    async def resolution_edges(self) -> ProbeResult:
        """The advertised pixel limits hold at their edges: the largest allowed square generates (1 step);
        one step beyond, and a side that is not a multiple of 16, are refused naming the field."""
        name, at = f"sd35.{self.v.name}.resolution", now_iso()
        max_side = int(math.isqrt(self.v.info.max_pixels)) // 16 * 16
        edge = await self.generate("a wide landscape", 3, size=max_side, steps=1)
        refusals = []
        for side in (max_side + 16, max_side - 8):
            try:
                await self.generate("a wide landscape", 3, size=side, steps=1)
                refusals.append((side, "ACCEPTED", ""))
            except DownstreamError as exc:
                if exc.details.code.name != "INVALID_ARGUMENT":
                    raise  # an outage or a timeout says nothing about the limits: the probe is unavailable
                fields = ",".join(f for f, _ in exc.details.violations)
                refusals.append((side, exc.details.code.name, fields))
        ok = (edge.width, edge.height) == (max_side, max_side) and all(
            code == "INVALID_ARGUMENT" and "width" in fields for _, code, fields in refusals)
        detail = (f"max_pixels {self.v.info.max_pixels} → {max_side}x{max_side} at 1 step: got "
                  f"{edge.width}x{edge.height}; " + "; ".join(f"{s}x{s}: {c} ({f or 'no field'})"
                                                              for s, c, f in refusals))
        return ProbeResult(name, ok, detail, [
            measurement("max_side_px", max_side, "px", name, "largest square inside max_pixels that generated",
                        self.w, at),
            measurement("max_megapixels", self.v.info.max_pixels / 1e6, "MP", name, "advertised pixel budget",
                        self.w, at),
        ], {"max_side": max_side, "min_pixels": self.v.info.min_pixels, "max_pixels": self.v.info.max_pixels},
            self.w, at)

    async def lora(self, load_path: str) -> ProbeResult:
        """A LoRA changes the output; generating without it again restores the base bytes."""
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
        ok = styled.png != base.png and again.png == base.png
        changed = "changed" if styled.png != base.png else "UNCHANGED"
        restored = "byte-identical to the base" if again.png == base.png else "DIFFERENT from the base"
        detail = f"adapter '{adapter}' at weight 1.0, seed 5: output {changed}; without it again: {restored}"
        return ProbeResult(name, ok, detail, [], {"adapter": adapter}, self.w, at)


