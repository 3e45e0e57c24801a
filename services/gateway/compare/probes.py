"""Live probes: small, bounded calls to the model services that turn capability claims into
observations (what was sent, what was seen, when, on which weights).

A probe only observes: it returns a :class:`ProbeResult` whose ``data`` the declared check
(:mod:`services.gateway.compare.checks`) judges. A probe that cannot run (service down, budget spent) returns
one with ``unavailable`` set and the reason read from the error details; a service that answers out of
contract (INTERNAL, UNKNOWN, a wrong count or shape, undecodable bytes, a refused valid request) gives
one with ``fault`` set. Probes never raise for downstream trouble (:func:`guarded`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from PIL import Image, ImageDraw
from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.vit.v1 import vit_pb2

from services.common.convert import PRECISION_FROM_PROTO
from services.gateway.downstream import Downstream, DownstreamError
from services.gateway.weights import ATTESTED, REAL

log = logging.getLogger(__name__)

#: Deadline of a probe's clean-up call (DeleteHead, UnloadAdapter), apart from the spent budget.
CLEANUP_TIMEOUT_S = 10.0
#: Weights whose values may decide claims about the checkpoint (accuracy, agreement, prompt adherence).
DECIDING_KINDS = (REAL, ATTESTED)
#: Codes that mean the service could not answer (an outage: UNAVAILABLE marks). Every other code is a
#: fault of the service toward a request within its advertised contract (CONTRADICTED marks), except the
#: deployment's own wiring (no such method, no permission, no such head/adapter), also an outage.
OUTAGE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                          grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
                          grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED,
                          grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
                          grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED})


class ContractError(Exception):
    """A reply that breaks the service's contract (wrong count or shape, empty labels, ...)."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise ContractError(what)


async def cleanup(call: Awaitable[Any]) -> None:
    """A clean-up call whose failure (already gone, service down) must not replace the probe's result."""
    try:
        await call
    except DownstreamError as exc:
        log.info("probe clean-up failed", extra={"component": exc.component, "error": exc.details.describe()})


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Budget:
    """The comparison's wall-clock budget; every downstream call gets at most what is left."""

    deadline: float  # time.monotonic()
    call_timeout_s: float

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self) -> float:
        return min(self.call_timeout_s, self.remaining())


@dataclass
class ProbeResult:
    """What one probe saw. ``data`` is its observation (judged by its check), ``detail`` the same in words."""

    probe: str
    detail: str = ""
    measurements: list[gateway_pb2.Measurement] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    weights: gateway_pb2.ServedWeights = field(default_factory=gateway_pb2.ServedWeights)
    at: str = ""
    unavailable: gateway_pb2.Unavailable | None = None
    #: The service answered out of contract: what was seen (the check is then CONTRADICTED).
    fault: str = ""

    @property
    def ran(self) -> bool:
        return self.unavailable is None

    @property
    def observed(self) -> bool:
        return self.unavailable is None and not self.fault


def unavailable(probe: str, exc: DownstreamError | str, weights: gateway_pb2.ServedWeights | None = None
                ) -> ProbeResult:
    if isinstance(exc, DownstreamError):
        d = exc.details
        item = gateway_pb2.Unavailable(component=exc.component, code=d.code.name, reason=d.reason,
                                       message=d.message)
    else:
        item = gateway_pb2.Unavailable(component=probe, code="", reason="", message=exc)
    return ProbeResult(probe, weights=weights or gateway_pb2.ServedWeights(), at=now_iso(), unavailable=item)


def faulty(probe: str, seen: str, weights: gateway_pb2.ServedWeights) -> ProbeResult:
    return ProbeResult(probe, f"the service answered out of contract: {seen}", weights=weights, at=now_iso(),
                       fault=seen)


def measurement(name: str, value: float, unit: str, probe: str, detail: str, weights: gateway_pb2.ServedWeights,
                at: str) -> gateway_pb2.Measurement:
    return gateway_pb2.Measurement(name=name, value=value, unit=unit, probe=probe, detail=detail, measured_at=at,
                                   weights=weights, mechanism_only=weights.kind not in DECIDING_KINDS)


def test_image(seed: int, size: int = 224) -> bytes:
    """A deterministic PNG with shapes and a gradient (a real image file, not random noise)."""
    image = Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    draw = ImageDraw.Draw(image)
    for i in range(6):
        x0, y0 = (seed * 17 + i * 31) % size, (seed * 29 + i * 47) % size
        draw.ellipse([x0, y0, x0 + size // 4, y0 + size // 5], fill=((i * 70) % 256, (seed * 40) % 256, 200 - i * 20))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _images(seeds: range | list[int]) -> list[common_pb2.Image]:
    return [common_pb2.Image(data=test_image(s), mime_type="image/png") for s in seeds]


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# -- the ViT service ------------------------------------------------------------------------------
@dataclass
class VitInfo:
    component: str
    response: vit_pb2.GetModelInfoResponse
    weights: gateway_pb2.ServedWeights


def _distribution(c: vit_pb2.Classification) -> dict[int, float]:
    return {lab.index: lab.score for lab in c.labels}


def _l1(a: dict[int, float], b: dict[int, float]) -> float:
    return sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in a.keys() | b.keys())


def _solid(rgb: tuple[int, int, int]) -> common_pb2.Image:
    buf = io.BytesIO()
    Image.new("RGB", (224, 224), rgb).save(buf, format="PNG")
    return common_pb2.Image(data=buf.getvalue(), mime_type="image/png")


#: Images of the batching and precision probes.
BATCH, BATCH_CALLS, PRECISION_IMAGES, PRECISION_TIMED_CALLS = 10, 2, 32, 5


class VitProbes:
    """Probes of one vit deployment (``component`` is "vit" or "vit-int8" …). Each only observes."""

    def __init__(self, downstream: Downstream, info: VitInfo, budget: Budget) -> None:
        self.ds = downstream
        self.info = info
        self.budget = budget
        self.w = info.weights

    async def _call(self, method: str, request: Any, component: str = "") -> Any:
        return await self.ds.call(component or self.info.component, method, request, self.budget.timeout())

    async def _timed(self, method: str, request: Any, component: str = "") -> tuple[Any, float]:
        t0 = time.perf_counter()
        reply = await self._call(method, request, component)
        expect(len(reply.results) == len(request.images),
               f"{method} answered {len(reply.results)} results for {len(request.images)} images")
        return reply, (time.perf_counter() - t0) * 1e3

    async def distribution(self) -> ProbeResult:
        """Classify one image over all labels with its logits."""
        name, at, n = "vit.distribution", now_iso(), self.info.response.num_labels
        reply, ms = await self._timed("Classify", vit_pb2.ClassifyRequest(images=_images([1]), top_k=n,
                                                                           return_logits=True))
        result = reply.results[0]
        expect(len(result.labels) > 0, "Classify answered no labels")
        scores = [lab.score for lab in result.labels]
        total = sum(scores)
        argmax = max(range(len(result.logits)), key=result.logits.__getitem__) if result.logits else -1
        top = result.labels[0]
        data = {"labels": len(result.labels), "expected": n, "sum": total, "top1": top.index, "argmax": argmax,
                "sorted": scores == sorted(scores, reverse=True), "batch": 1, "resolution": 224}
        detail = (f"sent 1 PNG (224x224) with top_k={n} and return_logits; saw {len(result.labels)} label scores "
                  f"summing to {total:.6f}, top-1 '{top.label}' (index {top.index}) "
                  f"{'=' if top.index == argmax else '!='} argmax of the {len(result.logits)} logits (index {argmax})"
                  f"{'' if data['sorted'] else '; scores NOT in descending order'}")
        return ProbeResult(name, detail, [
            measurement("labels", len(result.labels), "count", name, "scores returned for one image", self.w, at),
            measurement("score_sum", total, "probability", name, "sum of the softmax scores", self.w, at),
            measurement("classify_latency_ms", ms, "ms", name, "one Classify call, 1 image, all labels", self.w, at),
        ], data, self.w, at)

    async def embedding(self) -> ProbeResult:
        """Layers 0..N of one image, then its final normalised embedding twice: the width as measured."""
        name, at = "vit.embedding", now_iso()
        layers = list(range(self.info.response.num_hidden_layers + 1))
        req = vit_pb2.EmbedRequest(images=_images([2]), layers=layers, pooling=vit_pb2.POOLING_CLS)
        reply, _ = await self._timed("Embed", req)
        widths = [len(e.values) for e in reply.results[0].embeddings]
        final = vit_pb2.EmbedRequest(images=_images([2]), pooling=vit_pb2.POOLING_CLS, normalize=True)
        (first, _), (second, _) = await self._timed("Embed", final), await self._timed("Embed", final)
        expect(len(first.results[0].embeddings) == 1 == len(second.results[0].embeddings),
               "Embed without layers answered other than one vector")
        a, b = list(first.results[0].embeddings[0].values), list(second.results[0].embeddings[0].values)
        norm = math.sqrt(sum(v * v for v in a))
        data = {"layers_asked": len(layers), "layers": len(widths), "widths": sorted(set(widths)), "width": len(a),
                "dimension": first.dimension, "advertised": self.info.response.hidden_size, "repeatable": a == b,
                "max_jitter": max((abs(x - y) for x, y in zip(a, b, strict=False)), default=0.0), "norm": norm,
                "batch": 1, "resolution": 224}
        detail = (f"asked for layers 0..{layers[-1]} of one image: got {len(widths)} vectors of widths "
                  f"{data['widths']}; the final normalised embedding measured {len(a)} wide (the reply says "
                  f"{first.dimension}, GetModelInfo {data['advertised']}), norm {norm:.4f}; asked twice: "
                  + ("identical" if a == b else f"DIFFERENT (max difference {data['max_jitter']:.3g})"))
        return ProbeResult(name, detail, [
            measurement("embedding_width", len(a), "dims", name, "measured length of the final embedding", self.w, at),
            measurement("layers_reachable", len(widths), "count", name, "hidden-state layers returned (0..N)",
                        self.w, at),
        ], data, self.w, at)

    async def batching(self) -> ProbeResult:
        """The same 10 images one by one and as one batch: the same answers in the same order; throughput."""
        name, at, n = "vit.batching", now_iso(), self.info.response.num_labels
        images = _images(range(10, 10 + BATCH))
        await self._call("Classify", vit_pb2.ClassifyRequest(images=images[:1], top_k=n))  # warm
        singles = [await self._timed("Classify", vit_pb2.ClassifyRequest(images=[img], top_k=n)) for img in images]
        batch = vit_pb2.ClassifyRequest(images=images, top_k=n)
        batches = [await self._timed("Classify", batch) for _ in range(BATCH_CALLS)]
        one = [_distribution(reply.results[0]) for reply, _ in singles]
        together = [_distribution(c) for c in batches[0][0].results]
        # answer i of the batch must be (within numeric noise) the single answer for image i, and no closer to
        # the single answer of another image: an out-of-order batch fails here
        misplaced = [i for i, got in enumerate(together)
                     if _l1(got, one[i]) > min(0.02, min(_l1(got, s) for s in one) + 1e-9)]
        p50 = statistics.median(ms for _, ms in singles)
        batch_ms = statistics.median(ms for _, ms in batches)
        ratio = (BATCH / batch_ms) / (1 / p50)
        data = {"misplaced": misplaced, "images": BATCH, "ratio": ratio, "p50": p50, "batch": BATCH,
                "resolution": 224}
        detail = (f"{BATCH} images one by one (p50 {p50:.1f} ms) and as one batch of {BATCH} (median of "
                  f"{BATCH_CALLS}: "
                  f"{batch_ms:.1f} ms): " + ("every batch answer equals its single-image answer, in order"
                                             if not misplaced else f"batch answers {misplaced} are NOT the "
                                             "single-image answers for those images (order or content)")
                  + f"; throughput {ratio:.2f}x that of batch 1")
        return ProbeResult(name, detail, [
            measurement("latency_p50_ms", p50, "ms", name, f"{BATCH} single-image Classify calls", self.w, at),
            measurement("latency_p95_ms", max(ms for _, ms in singles), "ms", name,
                        f"slowest of the {BATCH} (p95 of {BATCH})", self.w, at),
            measurement("throughput_img_s", 1000 / p50, "img/s", name, "1 / p50 of single-image calls", self.w, at),
            measurement("batch10_throughput_ratio", ratio, "x", name,
                        f"images/s at {BATCH} images per request ÷ images/s at 1", self.w, at),
        ], data, self.w, at)

    async def transfer(self) -> ProbeResult:
        """Train a linear head on 8 labelled images, classify 4 held-out ones with it, delete it."""
        name, at = "vit.transfer", now_iso()
        head = f"versus-probe-{int(time.time() * 1000) % 10**9}"
        colours = {"red": (220, 30, 30), "blue": (30, 60, 220)}
        examples = [vit_pb2.LabelledImage(image=_solid(tuple(max(0, c - 12 * k) for c in rgb)), label=label)
                    for label, rgb in colours.items() for k in range(4)]
        # held out: shades the head never saw in training
        held_out = [(label, _solid(tuple(max(0, c - 6 - 12 * k) for c in rgb)))
                    for label, rgb in colours.items() for k in (0, 2)]
        try:
            created = await self._call("CreateHead", vit_pb2.CreateHeadRequest(name=head, examples=examples,
                                                                                epochs=50))
            reply, _ = await self._timed("Classify", vit_pb2.ClassifyRequest(
                images=[img for _, img in held_out], top_k=1, head=head))
            expect(all(r.labels for r in reply.results), "Classify with the head answered no labels")
            got = [r.labels[0].label for r in reply.results]
        finally:  # never leave a probe head behind (its own timeout: the budget may be spent by now)
            await cleanup(self.ds.call(self.info.component, "DeleteHead", vit_pb2.DeleteHeadRequest(name=head),
                                       CLEANUP_TIMEOUT_S))
        expected = [label for label, _ in held_out]
        data = {"expected": expected, "got": got, "head_labels": sorted(created.head.labels)}
        detail = (f"CreateHead '{head}' on 8 labelled images (red/blue): training accuracy "
                  f"{created.head.training_accuracy:.2f}; classified 4 held-out shades, expected {expected}, "
                  f"got {got}; deleted it")
        return ProbeResult(name, detail, [
            measurement("head_training_accuracy", created.head.training_accuracy, "fraction", name,
                        "linear probe on the model's embeddings, 8 examples, 2 labels", self.w, at),
            measurement("head_heldout_accuracy", sum(a == b for a, b in zip(got, expected, strict=True)) / 4,
                        "fraction", name, "the head on 4 held-out examples", self.w, at)], data, self.w, at)

    async def precision(self, component: str, precision: str, base: str = "") -> ProbeResult:
        """Another deployment of the same model at ``precision`` against the fp32 one (``base``): the precision
        it reports, top-1 agreement over PRECISION_IMAGES images, speed-up = ratio of medians of timed calls."""
        name, at, base = f"vit.precision.{precision}", now_iso(), base or self.info.component
        info = await self._call("GetModelInfo", vit_pb2.GetModelInfoRequest(), component)
        reported = PRECISION_FROM_PROTO.get(info.model.precision, "unspecified")
        req = vit_pb2.ClassifyRequest(images=_images(range(30, 30 + PRECISION_IMAGES)), top_k=1)
        ref, _ = await self._timed("Classify", req, base)
        other, _ = await self._timed("Classify", req, component)
        agree = sum(a.labels[0].index == b.labels[0].index
                    for a, b in zip(ref.results, other.results, strict=True)) / PRECISION_IMAGES
        timed = vit_pb2.ClassifyRequest(images=req.images[:8], top_k=1)
        ref_ms, other_ms = [], []
        for _ in range(PRECISION_TIMED_CALLS):  # alternated, so load drifts hit both alike
            ref_ms.append((await self._timed("Classify", timed, base))[1])
            other_ms.append((await self._timed("Classify", timed, component))[1])
        speedup = statistics.median(ref_ms) / statistics.median(other_ms)
        data = {"asked": precision, "reported": reported, "agreement": agree, "images": PRECISION_IMAGES,
                "speedup": speedup, "precision": precision, "batch": 8, "resolution": 224}
        detail = (f"{component} reports precision {reported} (asked for {precision}); {PRECISION_IMAGES} images "
                  f"through {base} (fp32) and {component}: top-1 agreement {agree:.1%}; 8 images x "
                  f"{PRECISION_TIMED_CALLS} timed calls each, median {statistics.median(ref_ms):.0f} ms vs "
                  f"{statistics.median(other_ms):.0f} ms: {speedup:.2f}x")
        return ProbeResult(name, detail, [
            measurement(f"{precision}_speedup", speedup, "x", name, f"{precision} vs fp32: ratio of the medians of "
                        f"{PRECISION_TIMED_CALLS} timed calls of 8 images", self.w, at),
            measurement(f"{precision}_top1_agreement", agree, "fraction", name,
                        f"top-1 agreement of {precision} with fp32 on {PRECISION_IMAGES} images", self.w, at),
        ], data, self.w, at)


async def guarded(probe: str, fn: Callable[[], Awaitable[ProbeResult]], weights: gateway_pb2.ServedWeights,
                  ) -> ProbeResult:
    """Run one probe. An outage becomes an unavailable result with the structured reason; a fault of the
    service (INTERNAL, UNKNOWN, a refused valid request, a reply out of contract) a faulty one."""
    try:
        return await fn()
    except DownstreamError as exc:
        if exc.details.code in OUTAGE_CODES:
            return unavailable(probe, exc, weights)
        d = exc.details
        return faulty(probe, f"{exc.component} answered {d.code.name} ({d.reason or 'no reason'}): {d.message}",
                      weights)
    except TimeoutError:
        return unavailable(probe, "budget exhausted", weights)
    except (ContractError, IndexError, ValueError, OSError) as exc:  # OSError: PIL cannot decode the bytes
        return faulty(probe, f"{type(exc).__name__}: {exc}", weights)
