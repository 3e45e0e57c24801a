"""Live probes of one SD3.5 variant: generations that turn its claims into observations (judged by the
checks in :mod:`services.gateway.compare.checks`).

Every image is decoded (PIL → an RGB pixel array) and images are compared by their pixels: two PNGs of
the same pixels with different metadata are the same image, and a PNG text chunk never counts. The
figures a probe expects (sizes, default steps) come from the catalog (:mod:`.sd35_expected`); the
service's own reply fields (``steps``, ``width``) and progress events are shown, never counted."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass

import numpy as np
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
from services.gateway.compare.sd35_expected import Expected
from services.gateway.config import ServedBy
from services.gateway.downstream import Downstream, DownstreamError

#: Two prompts identical in their first 77 CLIP tokens (80 one-token words: CLIP truncates inside them) and
#: different after: only a third encoder that reads further (T5, asked for T5_TOKENS tokens) can tell them
#: apart. Short words keep the tail inside T5's limit even for a character-level tokenizer.
_LONG = " ".join(["fox"] * 80)
T5_PROMPTS = (f"{_LONG}, under a full moon at night", f"{_LONG}, in bright morning sunshine with snow")
T5_TOKENS = 512
#: Below this standard deviation of its pixel values (0..255 levels, over all pixels and channels) an image is
#: flat: no picture. Measured on the tiny random-weight pipelines at 64 px: 41.6 levels.
FLAT_SPREAD = 4.0
#: Another seed must move the pixels by more than this mean absolute difference (0..255 levels). Measured on
#: the tiny random-weight pipelines at 64 px: 40.8 levels between seeds 7 and 8.
SEED_MIN_DIFF = 4.0


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
    width: int  # the reply's own fields (shown, never counted)
    height: int
    steps: int
    seed: int
    total_ms: float
    decoded: tuple[int, int]  # (width, height) of the decoded image
    pixels: np.ndarray  # decoded RGB, int16 (so differences do not wrap)

    def same(self, other: Generated) -> bool:
        """Identical pixels (PNG metadata and encoding never count)."""
        return self.pixels.shape == other.pixels.shape and bool(np.array_equal(self.pixels, other.pixels))

    def diff(self, other: Generated) -> float:
        """Mean absolute pixel difference in 0..255 levels (255 when the sizes differ)."""
        if self.pixels.shape != other.pixels.shape:
            return 255.0
        return float(np.abs(self.pixels - other.pixels).mean())

    @property
    def spread(self) -> float:
        """Standard deviation of the pixel values: near 0 for a flat image."""
        return float(self.pixels.std())


def _decode(png: bytes) -> tuple[tuple[int, int], np.ndarray]:
    with Image.open(io.BytesIO(png)) as img:  # OSError when the bytes are not an image: a fault
        img.load()
        return img.size, np.asarray(img.convert("RGB"), dtype=np.int16)


class Sd35Probes:
    """Probes of one SD3.5 variant. Each only observes."""

    def __init__(self, downstream: Downstream, variant: VariantInfo, budget: Budget, expected: Expected,
                 size: int = 0, steps: int = 0) -> None:
        self.ds = downstream
        self.v = variant
        self.target = downstream.component(ServedBy("sd35", variant.name))  # its own deployment, or the shared one
        self.budget = budget
        self.w = variant.weights
        self.expected = expected
        self.size = expected.probe_side(size)
        self.steps = steps

    async def generate(self, prompt: str, seed: int, *, size: int = 0, steps: int = 0, guidance: float | None = None,
                       negative: str = "", adapters: tuple[tuple[str, float], ...] = (),
                       max_sequence_length: int = 0) -> Generated:
        """One image; a reply without one, or whose bytes do not decode, breaks the contract."""
        side = size or self.size
        req = sd35_pb2.GenerateRequest(prompt=prompt, negative_prompt=negative, variant=variant_enum(self.v.name),
                                       width=side, height=side, seed=seed, max_sequence_length=max_sequence_length,
                                       output_format=sd35_pb2.OUTPUT_FORMAT_PNG)
        if steps >= 0 and (steps or self.steps):  # steps=-1: unset (the variant's default), whatever configured
            req.steps = steps or self.steps
        if guidance is not None:
            req.guidance_scale = guidance
        for adapter, weight in adapters:
            req.adapters.add(name=adapter, weight=weight)
        t0 = time.perf_counter()
        events = await self.ds.stream(self.target, "Generate", req, self.budget.timeout())
        result = next((e.result for e in events if e.WhichOneof("event") == "result"), None)
        expect(result is not None and len(result.images) == 1 and len(result.seeds) == 1,
               f"Generate of one image ended with {len(result.images) if result else 'no'} result images")
        png = result.images[0].data
        decoded, pixels = _decode(png)
        return Generated(png, result.width, result.height, result.steps, result.seeds[0],
                         (time.perf_counter() - t0) * 1e3, decoded, pixels)

    async def size_and_determinism(self) -> ProbeResult:
        """A picture of the requested size that depends on its prompt: two prompts, same seed, compared by
        their decoded pixels; a flat image is no picture."""
        name, at = f"sd35.{self.v.name}.generate", now_iso()
        prompt = "a photo of a lighthouse at dusk"
        first = await self.generate(prompt, 7)
        other = await self.generate("a red bicycle on a beach", 7)
        data = {"requested": [self.size, self.size], "decoded": list(first.decoded),
                "reported": [first.width, first.height], "spread": first.spread, "flat_below": FLAT_SPREAD,
                "prompt_diff": first.diff(other), "prompt_changes": not first.same(other),
                "ms": first.total_ms, "resolution": self.size, "batch": 1}
        detail = (f"Generate '{prompt}' at {self.size}x{self.size}, seed 7: decoded a {first.decoded[0]}x"
                  f"{first.decoded[1]} image (the reply says {first.width}x{first.height}, {first.steps} steps) in "
                  f"{first.total_ms:.0f} ms, pixel spread {first.spread:.1f} levels (flat below {FLAT_SPREAD:g}); "
                  f"another prompt, same seed: mean pixel difference {data['prompt_diff']:.2f} levels "
                  f"(PNG sha256 {digest_bytes(first.png)}; metadata never counts)")
        return ProbeResult(name, detail, [
            measurement("generate_ms", first.total_ms, "ms", name, f"one {self.size}x{self.size} image at the "
                        f"variant's default steps", self.w, at),
            measurement("pixel_spread", first.spread, "levels", name, "standard deviation of the decoded pixels",
                        self.w, at),
        ], data, self.w, at)

    async def determinism(self) -> ProbeResult:
        """The same request and seed twice: identical pixels; another seed: pixels that move."""
        name, at = f"sd35.{self.v.name}.determinism", now_iso()
        prompt = "a photo of a lighthouse at dusk"
        first = await self.generate(prompt, 7)
        again = await self.generate(prompt, 7)
        other = await self.generate(prompt, 8)
        data = {"deterministic": first.same(again), "repeat_diff": first.diff(again), "seed_diff": first.diff(other),
                "seed_min_diff": SEED_MIN_DIFF, "resolution": self.size, "batch": 1}
        detail = (f"'{prompt}' at {self.size}x{self.size}, seed 7 twice: "
                  f"{'identical pixels' if data['deterministic'] else 'DIFFERENT pixels'} (mean difference "
                  f"{data['repeat_diff']:.3g}); seed 8: mean pixel difference {data['seed_diff']:.2f} levels "
                  f"(more than {SEED_MIN_DIFF:g} expected)")
        return ProbeResult(name, detail, [measurement("seed_pixel_diff", data["seed_diff"], "levels", name,
                                                      "mean absolute pixel difference, seed 7 vs 8", self.w, at)],
                           data, self.w, at)

    async def default_steps(self) -> ProbeResult:
        """The default step count, observed: the default's pixels equal an explicit ``steps=N`` (N from the
        catalog) and differ from N-1 and N+1, same prompt, size and seed. The reply's ``steps`` is shown only."""
        name, at, n = f"sd35.{self.v.name}.steps", now_iso(), self.expected.default_steps
        data: dict[str, object] = {"expected": n, "resolution": self.size, "batch": 1}
        if n is None:
            return ProbeResult(name, "the catalog states no default step count for this model", [], data, self.w, at)
        prompt = "a photo of a lighthouse at dusk"
        default = await self.generate(prompt, 7, steps=-1)
        explicit = {k: await self.generate(prompt, 7, steps=k) for k in (n - 1, n, n + 1) if k >= 1}
        equal = {k: default.same(g) for k, g in explicit.items()}
        data |= {"equal": {str(k): v for k, v in equal.items()}, "reported": default.steps,
                 "observed": n if equal[n] and not any(v for k, v in equal.items() if k != n) else None}
        detail = (f"'{prompt}' at {self.size}x{self.size}, seed 7, steps unset vs explicit "
                  + ", ".join(f"steps={k}: {'identical' if v else 'different'} pixels" for k, v in equal.items())
                  + f" (the reply says {default.steps} steps; replies and progress events never count)")
        matched = [k for k, v in equal.items() if v]
        seen = matched[0] if len(matched) == 1 else 0
        return ProbeResult(name, detail, [measurement(
            "default_steps", seen, "steps", name, f"the one of steps={n - 1}, {n}, {n + 1} whose pixels the default's "
            "equal (0: none or several)", self.w, at)], data, self.w, at)

    async def guidance(self) -> ProbeResult:
        """Classifier-free guidance and negative prompts (same seed)."""
        name, at = f"sd35.{self.v.name}.guidance", now_iso()
        prompt = "a red bicycle"
        plain = await self.generate(prompt, 11, guidance=0.0)
        guided = await self.generate(prompt, 11, guidance=4.5)
        negative = await self.generate(prompt, 11, guidance=4.5, negative="blurry, dark")
        data = {"guidance_changes": not plain.same(guided), "negative_changes": not guided.same(negative)}
        detail = (f"seed 11, guidance 0 vs 4.5: {'different' if data['guidance_changes'] else 'IDENTICAL'} pixels "
                  f"(mean difference {plain.diff(guided):.2f} levels); adding a negative prompt: "
                  f"{'different' if data['negative_changes'] else 'IDENTICAL'} ({guided.diff(negative):.2f})")
        return ProbeResult(name, detail, [], data, self.w, at)

    async def _edge(self, side: int) -> tuple[str, str]:
        """(what happened, the refusal's fields) for one 1-step square generation of ``side``; what happened is
        the decoded size ("1024x1024") or the refusal's code."""
        try:
            g = await self.generate("a wide landscape", 3, size=side, steps=1)
        except DownstreamError as exc:
            if exc.details.code.name != "INVALID_ARGUMENT":
                raise  # an outage says nothing about the sizes (a fault is judged by guarded)
            return "INVALID_ARGUMENT", ",".join(f for f, _ in exc.details.violations)
        return f"{g.decoded[0]}x{g.decoded[1]}", ""

    async def resolution(self) -> ProbeResult:
        """The square sizes the catalog claims, each generated at 1 step and decoded. The advertised limits
        only say what else to try: their smallest square generates; one step past the largest, and a side
        that is not a multiple of 16, are refused naming the field."""
        name, at, info = f"sd35.{self.v.name}.resolution", now_iso(), self.v.info
        max_side = math.isqrt(info.max_pixels) // 16 * 16 if info.max_pixels else 0
        if info.max_side:
            max_side = min(max_side, info.max_side) if max_side else info.max_side
        min_side = max(16, math.ceil(math.sqrt(info.min_pixels) / 16) * 16)
        claimed = {side: await self._edge(side) for side in self.expected.sides}
        accept = {side: await self._edge(side) for side in (min_side,) if side not in claimed}
        beyond = ([max_side + 16] if max_side else []) + [(max_side or min_side + 16) - 8]
        refuse = {side: await self._edge(side) for side in beyond}
        data = {"claimed": {str(k): v[0] for k, v in claimed.items()},
                "accepted": {str(k): v[0] for k, v in accept.items()},
                "refused": {str(k): list(v) for k, v in refuse.items()},
                "resolution": max(self.expected.sides, default=0)}
        detail = ("the catalog claims " + (", ".join(f"{s}x{s}" for s in claimed) or "no size") + "; "
                  + "; ".join(f"{s}x{s} at 1 step → {got}" for s, (got, _) in (claimed | accept).items())
                  + f"; advertised {info.min_pixels}..{info.max_pixels} pixels (max side {info.max_side or 'unset'}): "
                  + "; ".join(f"{s}x{s} → {got} ({fields or 'no field'})" for s, (got, fields) in refuse.items()))
        return ProbeResult(name, detail, [
            measurement("image_side_px", int(got.split("x")[0]) if got == f"{s}x{s}" else 0, "px", name,
                        f"decoded side of a requested {s}x{s} image (0: refused or another size)", self.w, at)
            for s, (got, _) in claimed.items()], data, self.w, at)

    async def t5(self) -> ProbeResult:
        """Two prompts identical in their first 77 CLIP tokens and different after, same seed."""
        name, at = f"sd35.{self.v.name}.t5", now_iso()
        a = await self.generate(T5_PROMPTS[0], 13, steps=2, max_sequence_length=T5_TOKENS)
        b = await self.generate(T5_PROMPTS[1], 13, steps=2, max_sequence_length=T5_TOKENS)
        t5 = self.v.info.model.properties.get("text_encoder_3", "")
        data = {"differ": not a.same(b), "t5_reported": t5}
        detail = (f"two {len(T5_PROMPTS[0].split())}-word prompts identical in their first 77 CLIP tokens and "
                  f"different after, max_sequence_length {T5_TOKENS}, seed 13, 2 steps: "
                  f"{'different' if data['differ'] else 'IDENTICAL'} pixels (mean difference {a.diff(b):.2f}) "
                  f"(the service reports text_encoder_3={t5 or 'nothing'})")
        return ProbeResult(name, detail, [], data, self.w, at)

    async def lora(self, load_path: str) -> ProbeResult:
        """A LoRA's effect; generating without it again."""
        name, at = f"sd35.{self.v.name}.lora", now_iso()
        listed = await self.ds.call(self.target, "ListAdapters", sd35_pb2.ListAdaptersRequest(), self.budget.timeout())
        mine = [a for a in listed.adapters if a.variant == variant_enum(self.v.name)]
        loaded_here = ""
        if not mine:
            if not load_path:
                return unavailable(name, "no LoRA adapter is loaded for this variant and none is configured "
                                         "(GATEWAY_LORA_PROBE_PATH)", self.w)
            loaded_here = "versus-probe-lora"
            await self.ds.call(self.target, "LoadAdapter", sd35_pb2.LoadAdapterRequest(
                name=loaded_here, path=load_path, variant=variant_enum(self.v.name)), self.budget.timeout())
        adapter = mine[0].name if mine else loaded_here
        try:
            base = await self.generate("a watercolor fox", 5)
            styled = await self.generate("a watercolor fox", 5, adapters=((adapter, 1.0),))
            again = await self.generate("a watercolor fox", 5)
        finally:  # never leave the probe's adapter loaded (it holds one of the variant's adapter slots)
            if loaded_here:
                await cleanup(self.ds.call(self.target, "UnloadAdapter", sd35_pb2.UnloadAdapterRequest(
                    name=loaded_here, variant=variant_enum(self.v.name)), CLEANUP_TIMEOUT_S))
        data = {"adapter": adapter, "changed": not styled.same(base), "restored": again.same(base)}
        changed = f"changed ({styled.diff(base):.2f} levels)" if data["changed"] else "UNCHANGED pixels"
        restored = "pixel-identical to the base" if data["restored"] else "DIFFERENT from the base"
        detail = f"adapter '{adapter}' at weight 1.0, seed 5: output {changed}; without it again: {restored}"
        return ProbeResult(name, detail, [], data, self.w, at)
