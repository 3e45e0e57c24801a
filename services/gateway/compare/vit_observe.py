"""Observations that tell a network from a fake, on any weights: the architecture as measured from the
vectors, and continuity (a slightly perturbed image stays closer than a different image). numpy only:
the gateway never loads torch."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2

from services.gateway.compare.probes import ProbeResult, expect, measurement, now_iso, test_image
from services.gateway.compare.vit_probes import VitProbes, distribution_of, l1, labels_digest
from services.gateway.downstream import DownstreamError

#: Pairs of the continuity probe (a hash of the bytes passes one pair about half the time) and the pixel
#: noise of the perturbed copy (uniform, in levels of 0..255).
CONTINUITY_PAIRS, NOISE_LEVELS, NOISE_SEED = 10, 4, 20261204


def png(pixels: np.ndarray) -> common_pb2.Image:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(buf, format="PNG")
    return common_pb2.Image(data=buf.getvalue(), mime_type="image/png")


def pixels_of(seed: int) -> np.ndarray:
    with Image.open(io.BytesIO(test_image(seed))) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def perturbed(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.integers(-NOISE_LEVELS, NOISE_LEVELS + 1, size=pixels.shape)
    return np.clip(pixels + noise, 0, 255)


async def _chunked(vp: VitProbes, method: str, images: list[common_pb2.Image], **kw: object) -> list:
    """One request per chunk of at most the service's own per-request limit (how to call it)."""
    per = max(1, vp.info.response.max_images_per_request or len(images))
    out: list = []
    for i in range(0, len(images), per):
        req = (vit_pb2.ClassifyRequest if method == "Classify" else vit_pb2.EmbedRequest)(images=images[i:i + per],
                                                                                            **kw)
        reply, _ = await vp._timed(method, req)
        out.extend(reply.results)
    return out


def _pairs() -> tuple[list[common_pb2.Image], int]:
    """CONTINUITY_PAIRS + 1 images, then a copy of each of the first CONTINUITY_PAIRS under ±NOISE_LEVELS."""
    rng = np.random.default_rng(NOISE_SEED)
    bases = [pixels_of(s) for s in range(50, 51 + CONTINUITY_PAIRS)]
    return [png(b) for b in bases] + [png(perturbed(b, rng)) for b in bases[:CONTINUITY_PAIRS]], CONTINUITY_PAIRS


def _continuity(vp: VitProbes, name: str, what: str, near: list[float], far: list[float]) -> ProbeResult:
    at, n = now_iso(), len(near)
    held = sum(a < b for a, b in zip(near, far, strict=True))
    ratio = max((a / b if b else math.inf) for a, b in zip(near, far, strict=True))
    data = {"pairs": n, "held": held, "worst_ratio": ratio, "noise": NOISE_LEVELS, "seed": NOISE_SEED, "what": what,
            "batch": 1, "resolution": 224}
    detail = (f"{n} images, each beside a copy with ±{NOISE_LEVELS} levels of pixel noise (seed {NOISE_SEED}) and "
              f"the next image: the copy was closer in the {what} for {held}/{n} pairs (worst: the copy moved "
              f"{ratio:.1%} of the distance to a different image)")
    return ProbeResult(name, detail, [
        measurement(f"continuity_{what}_pairs_held", held, "pairs", name,
                    f"of {n}: perturbed copy closer than a different image ({what})", vp.w, at),
    ], data, vp.w, at)


async def continuity_scores(vp: VitProbes) -> ProbeResult:
    """Classify CONTINUITY_PAIRS images, their noisy copies and the next image: L1 between the scores."""
    images, n = _pairs()
    scores = [distribution_of(c) for c in await _chunked(vp, "Classify", images, top_k=vp.top_k())]
    return _continuity(vp, "vit.continuity.scores", "scores", [l1(scores[i], scores[n + 1 + i]) for i in range(n)],
                       [l1(scores[i], scores[i + 1]) for i in range(n)])


async def continuity_embedding(vp: VitProbes) -> ProbeResult:
    """Embed the same images: Euclidean distance between the normalised vectors."""
    images, n = _pairs()
    vectors = [np.asarray(e.embeddings[0].values, dtype=np.float64)
               for e in await _chunked(vp, "Embed", images, pooling=vit_pb2.POOLING_CLS, normalize=True)]
    expect(all(len(v) == len(vectors[0]) for v in vectors), "Embed answered vectors of different widths")
    return _continuity(vp, "vit.continuity.embedding", "embedding",
                       [float(np.linalg.norm(vectors[i] - vectors[n + 1 + i])) for i in range(n)],
                       [float(np.linalg.norm(vectors[i] - vectors[i + 1])) for i in range(n)])


async def _refuses_layer(vp: VitProbes, layer: int) -> bool:
    try:
        await vp._call("Embed", vit_pb2.EmbedRequest(images=[png(pixels_of(4))], layers=[layer]))
    except DownstreamError as exc:
        if exc.details.code.name == "INVALID_ARGUMENT":
            return True
        raise
    return False


async def architecture(vp: VitProbes) -> ProbeResult:
    """Layers, width and labels as the vectors and scores show them, beside the catalog checkpoint's."""
    name, at, r, e = "vit.architecture", now_iso(), vp.info.response, vp.expected
    layers = list(range(r.num_hidden_layers + 1))
    reply, _ = await vp._timed("Embed", vit_pb2.EmbedRequest(images=[png(pixels_of(4))], layers=layers,
                                                              pooling=vit_pb2.POOLING_CLS))
    widths = sorted({len(x.values) for x in reply.results[0].embeddings})
    expect(len(widths) == 1, f"hidden states of different widths {widths}")
    beyond = await _refuses_layer(vp, r.num_hidden_layers + 1)
    cls, _ = await vp._timed("Classify", vit_pb2.ClassifyRequest(images=[png(pixels_of(4))], top_k=vp.top_k()))
    labels = cls.results[0].labels
    data = {"layers": len(reply.results[0].embeddings) - 1, "layer_beyond_refused": beyond, "width": widths[0],
            "labels": len({lab.index for lab in labels}), "labels_sha256": labels_digest([lab.label for lab in labels]),
            "reported_layers": r.num_hidden_layers, "reported_width": r.hidden_size,
            "expected": {"layers": e.layers, "width": e.hidden_size, "labels": e.num_labels,
                         "labels_sha256": e.labels_sha256, "source": e.source} if e is not None else {}}
    detail = (f"Embed of layers 0..{r.num_hidden_layers}: {data['layers']} blocks after the patch embeddings, "
              f"{widths[0]} wide; layer {r.num_hidden_layers + 1} "
              f"{'refused' if beyond else 'ANSWERED (beyond the layers the service reports)'}; Classify top_k="
              f"{vp.top_k()}: {data['labels']} distinct labels")
    return ProbeResult(name, detail, [
        measurement("layers", data["layers"], "count", name, "transformer blocks, from the hidden states", vp.w, at),
        measurement("hidden_size", widths[0], "dims", name, "measured width of the hidden states", vp.w, at),
    ], data, vp.w, at)
