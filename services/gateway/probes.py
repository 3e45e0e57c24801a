"""Live probes: small, bounded calls to the model services that turn capability claims into
observations (what was sent, what was seen, when, on which weights).

Each probe returns a :class:`ProbeResult`; a probe that cannot run (service down, budget spent,
nothing to probe) returns one with ``unavailable`` set and the reason read from the error details.
Probes never raise for downstream trouble.
"""

from __future__ import annotations

import hashlib
import io
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from PIL import Image, ImageDraw
from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.vit.v1 import vit_pb2

from services.common.convert import PRECISION_FROM_PROTO
from services.gateway.downstream import Downstream, DownstreamError

#: Deadline of a probe's clean-up call (DeleteHead, UnloadAdapter), apart from the spent budget.
CLEANUP_TIMEOUT_S = 10.0


async def cleanup(call: Awaitable[Any]) -> None:
    """A clean-up call whose failure (already gone, service down) must not replace the probe's result."""
    try:
        await call
    except DownstreamError as exc:
        log.info("probe clean-up failed", extra={"component": exc.component, "error": exc.details.describe()})


log = logging.getLogger(__name__)


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
    probe: str
    ok: bool = False
    detail: str = ""
    measurements: list[gateway_pb2.Measurement] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    weights: gateway_pb2.ServedWeights = field(default_factory=gateway_pb2.ServedWeights)
    at: str = ""
    unavailable: gateway_pb2.Unavailable | None = None

    @property
    def ran(self) -> bool:
        return self.unavailable is None


def unavailable(probe: str, exc: DownstreamError | str, weights: gateway_pb2.ServedWeights | None = None
                ) -> ProbeResult:
    if isinstance(exc, DownstreamError):
        d = exc.details
        item = gateway_pb2.Unavailable(component=exc.component, code=d.code.name, reason=d.reason,
                                       message=d.message[:300])
    else:
        item = gateway_pb2.Unavailable(component=probe, code="", reason="", message=exc)
    return ProbeResult(probe, weights=weights or gateway_pb2.ServedWeights(), at=now_iso(), unavailable=item)


def weights_of(service: str, info: common_pb2.ModelInfo) -> gateway_pb2.ServedWeights:
    props = info.properties
    return gateway_pb2.ServedWeights(
        service=service, served_model_id=info.id, digest=props.get("weights_digest", ""),
        kind=props.get("weights_kind", "unknown") or "unknown",
        precision=PRECISION_FROM_PROTO.get(info.precision, ""), device=info.device, backend=info.backend)


def measurement(name: str, value: float, unit: str, probe: str, detail: str, weights: gateway_pb2.ServedWeights,
                at: str) -> gateway_pb2.Measurement:
    return gateway_pb2.Measurement(name=name, value=value, unit=unit, probe=probe, detail=detail, measured_at=at,
                                   weights=weights, mechanism_only=weights.kind != "real")


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


class VitProbes:
    """Probes of one vit deployment (``component`` is "vit" or "vit-int8" …)."""

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
        return reply, (time.perf_counter() - t0) * 1e3

    async def distribution(self) -> ProbeResult:
        """Classify one image over all labels: a distribution summing to 1 whose top-1 is the logits' argmax."""
        name, at, n = "vit.distribution", now_iso(), self.info.response.num_labels
        req = vit_pb2.ClassifyRequest(images=_images([1]), top_k=n, return_logits=True)
        reply, ms = await self._timed("Classify", req)
        result = reply.results[0]
        total = sum(lab.score for lab in result.labels)
        argmax = max(range(len(result.logits)), key=result.logits.__getitem__) if result.logits else -1
        ok = len(result.labels) == n and abs(total - 1.0) < 1e-3 and result.labels[0].index == argmax
        detail = (f"sent 1 PNG (224x224) with top_k={n} and return_logits; saw {len(result.labels)} label scores "
                  f"summing to {total:.6f}, top-1 '{result.labels[0].label}' (index {result.labels[0].index}) "
                  f"{'=' if result.labels[0].index == argmax else '!='} argmax of the {len(result.logits)} logits "
                  f"(index {argmax})")
        return ProbeResult(name, ok, detail, [
            measurement("labels", len(result.labels), "count", name, "scores returned for one image", self.w, at),
            measurement("score_sum", total, "probability", name, "sum of the softmax scores", self.w, at),
            measurement("classify_latency_ms", ms, "ms", name, "one Classify call, 1 image, all labels", self.w, at),
        ], {"labels": len(result.labels), "sum": total, "top1_is_argmax": result.labels[0].index == argmax},
            self.w, at)

    async def embedding(self) -> ProbeResult:
        """Every layer 0..N reachable with the advertised width; repeated calls identical."""
        name, at = "vit.embedding", now_iso()
        layers = list(range(self.info.response.num_hidden_layers + 1))
        req = vit_pb2.EmbedRequest(images=_images([2]), layers=layers, pooling=vit_pb2.POOLING_CLS)
        reply = await self._call("Embed", req)
        widths = [len(e.values) for e in reply.results[0].embeddings]
        final = vit_pb2.EmbedRequest(images=_images([2]), pooling=vit_pb2.POOLING_CLS, normalize=True)
        first, second = await self._call("Embed", final), await self._call("Embed", final)
        same = list(first.results[0].embeddings[0].values) == list(second.results[0].embeddings[0].values)
        hidden = self.info.response.hidden_size
        ok = len(widths) == len(layers) and all(w == hidden for w in widths) and reply.dimension == hidden and same
        detail = (f"asked for layers 0..{layers[-1]} of one image: got {len(widths)} vectors of width "
                  f"{sorted(set(widths))} (advertised {hidden}); the final embedding twice: "
                  f"{'identical' if same else 'DIFFERENT'}")
        return ProbeResult(name, ok, detail, [
            measurement("embedding_width", hidden if widths else 0, "dims", name, "width of every layer's vector",
                        self.w, at),
            measurement("layers_reachable", len(widths), "count", name, "hidden-state layers returned (0..N)",
                        self.w, at),
        ], {"widths": widths, "layers": len(widths), "repeatable": same}, self.w, at)

    async def latency_and_batching(self) -> ProbeResult:
        """p50/p95 latency of single-image calls, and throughput at batch 10 against batch 1."""
        name, at = "vit.batching", now_iso()
        one = vit_pb2.ClassifyRequest(images=_images([3]), top_k=1)
        ten = vit_pb2.ClassifyRequest(images=_images(range(10, 20)), top_k=1)
        await self._call("Classify", one)  # warm
        singles = [(await self._timed("Classify", one))[1] for _ in range(7)]
        batches = [(await self._timed("Classify", ten))[1] for _ in range(2)]
        p50, p95 = statistics.median(singles), sorted(singles)[-1]
        ratio = (10 / statistics.median(batches)) / (1 / p50)
        detail = (f"7 single-image Classify calls: p50 {p50:.1f} ms; 2 calls of 10 images: median "
                  f"{statistics.median(batches):.1f} ms → throughput {ratio:.2f}x that of batch 1 "
                  f"(on {self.w.device}, {self.w.precision})")
        return ProbeResult(name, True, detail, [
            measurement("latency_p50_ms", p50, "ms", name, "7 sequential single-image Classify calls", self.w, at),
            measurement("latency_p95_ms", p95, "ms", name, "slowest of the 7 (p95 of 7)", self.w, at),
            measurement("throughput_img_s", 1000 / p50, "img/s", name, "1 / p50 of single-image calls", self.w, at),
            measurement("batch10_throughput_ratio", ratio, "x", name,
                        "images/s at 10 images per request ÷ images/s at 1", self.w, at),
        ], {"p50": p50, "ratio": ratio}, self.w, at)

    async def transfer(self) -> ProbeResult:
        """Fine-tuning mechanism: train a linear head on 8 labelled images, classify with it, delete it."""
        name, at = "vit.transfer", now_iso()
        head = f"versus-probe-{int(time.time() * 1000) % 10**9}"
        colours = {"red": (220, 30, 30), "blue": (30, 60, 220)}
        examples = []
        for label, rgb in colours.items():
            for k in range(4):
                image = Image.new("RGB", (224, 224), tuple(max(0, c - 12 * k) for c in rgb))
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                examples.append(vit_pb2.LabelledImage(image=common_pb2.Image(data=buf.getvalue()), label=label))
        try:
            created = await self._call("CreateHead", vit_pb2.CreateHeadRequest(name=head, examples=examples,
                                                                                epochs=50))
            probe = vit_pb2.ClassifyRequest(images=[examples[1].image, examples[6].image], top_k=1, head=head)
            reply = await self._call("Classify", probe)
            got = [r.labels[0].label for r in reply.results]
        finally:  # never leave a probe head behind (its own timeout: the budget may be spent by now)
            await cleanup(self.ds.call(self.info.component, "DeleteHead", vit_pb2.DeleteHeadRequest(name=head),
                                       CLEANUP_TIMEOUT_S))
        ok = got == ["red", "blue"]
        detail = (f"CreateHead '{head}' on 8 labelled images (red/blue): training accuracy "
                  f"{created.head.training_accuracy:.2f}; classified a red and a blue example as {got}; deleted it")
        return ProbeResult(name, ok, detail, [
            measurement("head_training_accuracy", created.head.training_accuracy, "fraction", name,
                        "linear probe on the model's embeddings, 8 examples, 2 labels", self.w, at)],
            {"labels": got}, self.w, at)

    async def precision(self, component: str, precision: str, base: str = "") -> ProbeResult:
        """Another deployment of the same model at ``precision``: speed and top-1 agreement against the fp32
        one (``base``, default this deployment), on the same 8 images, each timed warm."""
        name, at, base = f"vit.precision.{precision}", now_iso(), base or self.info.component
        req = vit_pb2.ClassifyRequest(images=_images(range(30, 38)), top_k=1)
        await self._timed("Classify", req, base)
        await self._timed("Classify", req, component)
        ref, ref_ms = await self._timed("Classify", req, base)
        other, other_ms = await self._timed("Classify", req, component)
        agree = sum(a.labels[0].index == b.labels[0].index
                    for a, b in zip(ref.results, other.results, strict=True)) / len(req.images)
        speedup = ref_ms / other_ms
        caveat = "" if self.w.kind == "real" else f" (agreement on {self.w.kind} weights says nothing about accuracy)"
        detail = (f"8 images through {base} (fp32) in {ref_ms:.0f} ms and {component} ({precision}) in "
                  f"{other_ms:.0f} ms: {speedup:.2f}x; top-1 agreement {agree:.0%}{caveat}")
        return ProbeResult(name, True, detail, [
            measurement(f"{precision}_speedup", speedup, "x", name, f"{precision} vs fp32, 8 images per request",
                        self.w, at),
            measurement(f"{precision}_top1_agreement", agree, "fraction", name,
                        f"top-1 agreement of {precision} with fp32 on 8 images", self.w, at),
        ], {"speedup": speedup, "agreement": agree, "precision": precision}, self.w, at)


async def guarded(probe: str, fn: Callable[[], Awaitable[ProbeResult]], weights: gateway_pb2.ServedWeights,
                  ) -> ProbeResult:
    """Run one probe; downstream trouble becomes an unavailable result with the structured reason."""
    try:
        return await fn()
    except DownstreamError as exc:
        return unavailable(probe, exc, weights)
    except TimeoutError:
        return unavailable(probe, "budget exhausted", weights)
    except (IndexError, ValueError, OSError) as exc:  # a reply that is not what the contract promises
        return unavailable(probe, f"malformed reply ({type(exc).__name__}: {str(exc)[:120]})", weights)
