"""SD3.5 fakes for the gateway's checks: real gRPC servers on loopback that implement the sd35 servicer (and,
for the quality check, a ViT judge) from the generated stubs. Honest by default; each ``lies`` flag breaks
one promise. The consistent lies keep GetModelInfo true to what the service does, so only observation can
catch them. They stand for faulty services, never for a model's output in a test of the model."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
from fake_services import Loopback, _refuse, _seed
from PIL import Image
from versus.common.v1 import common_pb2
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

#: The ImageNet-1k label names, as the judge fake serves them (the project's copy of the checkpoint's id2label).
LABELS = [line for line in (Path(__file__).resolve().parents[2] / "services/vit/data/imagenet1k_labels.txt")
          .read_text(encoding="utf-8").splitlines() if line]


def prompt_colour(prompt: str) -> np.ndarray:
    """The colour the fake generator gives a prompt, and the judge fake reads back as its class."""
    return np.frombuffer(hashlib.sha256(prompt.encode()).digest()[:3], dtype=np.uint8).astype(np.float64)


def _noise_png(digest: bytes, side: int, prompt: str = "") -> bytes:
    """A picture of 8x8-pixel blocks of noise seeded by ``digest`` (never flat; pixels follow the digest), its
    top-left quarter painted in the prompt's colour (what the judge fake recognises)."""
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    blocks = rng.integers(0, 256, (max(1, side // 8), max(1, side // 8), 3), dtype=np.uint8)
    pixels = blocks.repeat(8, 0).repeat(8, 1)[:side, :side]
    pixels[:side // 2, :side // 2] = prompt_colour(prompt).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _flat_png(digest: bytes, side: int) -> bytes:
    """A flat grey image whose PNG text chunk holds ``digest``: its bytes vary with the request, its pixels never."""
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("request", digest.hex())
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (128, 128, 128)).save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


class FakeSd35(sd35_pb2_grpc.Sd35ServiceServicer):
    """Large and Large Turbo "pipelines" that paint noise seeded from what a real pipeline would condition
    on. ``lies``: size, nondeterministic, guidance, accept-beyond, t5, lora, turbo-slow, undecodable,
    internal, down. Consistent lies (GetModelInfo describes what the service does): flat (a flat grey image,
    the request's hash in a PNG text chunk), max-256 (advertises and serves at most 256x256), steps-4 (Turbo
    says and replies 4 steps, runs 28), ignores-prompt (the prompt never reaches the picture)."""

    STEPS = {sd35_pb2.VARIANT_LARGE: 28, sd35_pb2.VARIANT_LARGE_TURBO: 4}

    def __init__(self, lies: frozenset[str] = frozenset()) -> None:
        self.lies = lies
        self.max_pixels = 256 * 256 if "max-256" in lies else 1024 * 1024
        self.generating = threading.Event()  # set by the first Generate (a test may kill the server then)

    async def Generate(self, request, context) -> AsyncIterator[sd35_pb2.GenerateResponse]:
        self.generating.set()
        if "down" in self.lies:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        if "internal" in self.lies:
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        side = request.width
        too_big = side * side > self.max_pixels and "accept-beyond" not in self.lies
        if too_big or side % 16:
            await _refuse(context, "width", f"width {side} is outside the limits")
        steps = request.steps if request.HasField("steps") else self.STEPS[request.variant]
        turbo = request.variant == sd35_pb2.VARIANT_LARGE_TURBO
        said = steps
        if turbo and not request.HasField("steps") and ({"turbo-slow", "steps-4"} & self.lies):
            steps = 28
            said = 4 if "steps-4" in self.lies else steps
        await asyncio.sleep(0.002 * steps)
        prompt = " ".join(request.prompt.split()[:60]) if "t5" in self.lies else request.prompt
        prompt = "" if "ignores-prompt" in self.lies else prompt
        guidance = request.guidance_scale if "guidance" not in self.lies else 0
        negative = request.negative_prompt if "guidance" not in self.lies else ""
        adapters = [(a.name, a.weight) for a in request.adapters] if "lora" not in self.lies else []
        extra = time.perf_counter() if "nondeterministic" in self.lies else 0
        digest = _seed(prompt, request.seed, guidance, negative, adapters, steps, extra)
        side -= 16 if "size" in self.lies else 0
        data = b"not a png" if "undecodable" in self.lies else _flat_png(digest, side) if "flat" in self.lies \
            else _noise_png(digest, side, prompt)
        yield sd35_pb2.GenerateResponse(result=sd35_pb2.Result(
            images=[common_pb2.Image(data=data, mime_type="image/png")], seeds=[request.seed], steps=said,
            width=side, height=side))

    async def GetModelInfo(self, request, context):
        if "info-down" in self.lies:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not ready")
        variants = []
        for v, steps in self.STEPS.items():
            model = common_pb2.ModelInfo(id="fake-sd35", backend="diffusers", device="cpu",
                                         precision=common_pb2.PRECISION_FP32,
                                         properties={"weights_kind": "random", "weights_digest": "b" * 64,
                                                     "transformer_layers": "2", "text_encoder_3": "t5"})
            variants.append(sd35_pb2.VariantInfo(variant=v, model=model, default_steps=steps, default_width=64,
                                                 default_height=64, min_pixels=0, max_pixels=self.max_pixels))
        return sd35_pb2.GetModelInfoResponse(variants=variants, max_prompt_chars=2000, max_queue=8, max_adapters=2)

    async def ListAdapters(self, request, context):
        return sd35_pb2.ListAdaptersResponse(adapters=[sd35_pb2.AdapterInfo(name="style", path="loras/style",
                                                                            variant=sd35_pb2.VARIANT_LARGE)])


def fake_sd35(lies: str = "") -> Loopback:
    return Loopback(FakeSd35(frozenset(filter(None, lies.split(",")))), sd35_pb2_grpc.add_Sd35ServiceServicer_to_server)


class FakeJudge(vit_pb2_grpc.VitServiceServicer):
    """A ViT judge for the quality check: the 1000 ImageNet labels, each image classified by the colour of its
    top-left quarter (the label whose "a photo of a {name}" has the nearest :func:`prompt_colour` first). It
    answers only what the quality stage asks: GetModelInfo and Classify. ``renamed``: it calls its first class
    something else (a label set that is not the catalog checkpoint's, consistently served)."""

    def __init__(self, renamed: bool = False) -> None:
        self.labels = (["not a tench"] if renamed else LABELS[:1]) + LABELS[1:]
        names = [f"a photo of a {label.split(',')[0].strip()}" for label in self.labels]
        self.colours = np.stack([prompt_colour(n) for n in names])
        self.classifying = threading.Event()  # set by the first Classify (a test may kill the server then)

    async def Classify(self, request, context):
        self.classifying.set()
        results = []
        for img in request.images:
            with Image.open(io.BytesIO(img.data)) as im:
                pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
            h, w = pixels.shape[:2]
            colour = pixels[:max(1, h // 2), :max(1, w // 2)].reshape(-1, 3).mean(axis=0)
            logits = -np.abs(self.colours - colour).sum(axis=1) / 8.0
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            order = np.argsort(-probs, kind="stable")[:request.top_k or 5]
            results.append(vit_pb2.Classification(
                labels=[vit_pb2.Label(index=int(i), label=self.labels[i], score=float(probs[i])) for i in order],
                logits=logits.tolist() if request.return_logits else []))
        return vit_pb2.ClassifyResponse(results=results, model_id="fake-judge")

    async def GetModelInfo(self, request, context):
        return vit_pb2.GetModelInfoResponse(
            model=common_pb2.ModelInfo(id="fake-judge", family="vit", precision=common_pb2.PRECISION_FP32,
                                       device="cpu", backend="torch", properties={"weights_kind": "random"}),
            image_size=224, num_labels=len(self.labels), num_hidden_layers=12, hidden_size=768,
            max_images_per_request=64, max_batch_size=32)


def fake_judge(renamed: bool = False) -> Loopback:
    return Loopback(FakeJudge(renamed), vit_pb2_grpc.add_VitServiceServicer_to_server)

