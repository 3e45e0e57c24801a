"""Probes of one ViT deployment. Each only observes; what it must show comes from the catalog entry of
the claim being checked (``expected``: the checkpoint's architecture), never from the service's own
description, which only says how to call it (how many labels to ask for, which layers exist)."""

from __future__ import annotations

import hashlib
import io
import math
import statistics
import time
from typing import Any

from PIL import Image
from versus.common.v1 import common_pb2
from versus.ranker.v1 import ranker_pb2
from versus.vit.v1 import vit_pb2

from services.common.convert import PRECISION_FROM_PROTO
from services.gateway.compare.probes import (
    CLEANUP_TIMEOUT_S,
    Budget,
    ProbeResult,
    VitInfo,
    cleanup,
    expect,
    images_of,
    measurement,
    now_iso,
)
from services.gateway.downstream import Downstream

#: Images of the batching and precision probes.
BATCH, BATCH_CALLS, PRECISION_IMAGES, PRECISION_TIMED_CALLS = 10, 2, 32, 5
#: Two answers closer than this (L1 over the scores, or L2 between vectors) are the same answer.
SAME = 1e-6


def distribution_of(c: vit_pb2.Classification) -> dict[int, float]:
    return {lab.index: lab.score for lab in c.labels}


def l1(a: dict[int, float], b: dict[int, float]) -> float:
    return sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in a.keys() | b.keys())


def labels_digest(names: list[str]) -> str:
    """As the catalog states it: sha256 of the names sorted and joined by newlines (duplicates kept)."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def _solid(rgb: tuple[int, int, int]) -> common_pb2.Image:
    buf = io.BytesIO()
    Image.new("RGB", (224, 224), rgb).save(buf, format="PNG")
    return common_pb2.Image(data=buf.getvalue(), mime_type="image/png")


class VitProbes:
    """Probes of one vit deployment (``component`` is "vit" or "vit-int8" …)."""

    def __init__(self, downstream: Downstream, info: VitInfo, budget: Budget,
                 expected: ranker_pb2.Architecture | None = None) -> None:
        self.ds = downstream
        self.info = info
        self.budget = budget
        self.w = info.weights
        self.expected = expected

    async def _call(self, method: str, request: Any, component: str = "") -> Any:
        return await self.ds.call(component or self.info.component, method, request, self.budget.timeout())

    async def _timed(self, method: str, request: Any, component: str = "") -> tuple[Any, float]:
        t0 = time.perf_counter()
        reply = await self._call(method, request, component)
        expect(len(reply.results) == len(request.images),
               f"{method} answered {len(reply.results)} results for {len(request.images)} images")
        return reply, (time.perf_counter() - t0) * 1e3

    def top_k(self) -> int:
        """All labels: the catalog's count, asked no higher than the service says it can answer (a larger
        top_k is outside its own contract; the count it then shows is what is judged)."""
        reported = self.info.response.num_labels
        claimed = self.expected.num_labels if self.expected is not None else 0
        return min(claimed, reported) if claimed and reported else claimed or reported or 1

    async def distribution(self) -> ProbeResult:
        """Two different images over all labels with their logits: the label set, the distribution, and
        whether the answer depends on the image."""
        name, at, k = "vit.distribution", now_iso(), self.top_k()
        reply, ms = await self._timed("Classify", vit_pb2.ClassifyRequest(images=images_of([1, 2]), top_k=k,
                                                                           return_logits=True))
        result, other = reply.results[0], reply.results[1]
        expect(len(result.labels) > 0, "Classify answered no labels")
        scores = [lab.score for lab in result.labels]
        total = sum(scores)
        argmax = max(range(len(result.logits)), key=result.logits.__getitem__) if result.logits else -1
        top = result.labels[0]
        names = [lab.label for lab in result.labels]
        e = self.expected
        data = {"labels": len(result.labels), "distinct": len({lab.index for lab in result.labels}), "asked": k,
                "reported": self.info.response.num_labels, "expected": e.num_labels if e else 0,
                "labels_sha256": labels_digest(names), "expected_sha256": e.labels_sha256 if e else "",
                "source": e.labels_source or e.source if e else "", "sum": total, "top1": top.index,
                "argmax": argmax, "sorted": scores == sorted(scores, reverse=True),
                "differs": l1(distribution_of(result), distribution_of(other)) > SAME, "batch": 1, "resolution": 224}
        detail = (f"sent 2 different PNGs (224x224) with top_k={k} and return_logits; saw {len(result.labels)} label "
                  f"scores ({data['distinct']} distinct indices, names sha256 {data['labels_sha256'][:12]}) summing "
                  f"to {total:.6f}, top-1 '{top.label}' (index {top.index}) "
                  f"{'=' if top.index == argmax else '!='} argmax of the {len(result.logits)} logits (index {argmax})"
                  f"{'' if data['sorted'] else '; scores NOT in descending order'}; the other image's answer was "
                  f"{'different' if data['differs'] else 'THE SAME'}")
        return ProbeResult(name, detail, [
            measurement("labels", len(result.labels), "count", name, "scores returned for one image", self.w, at),
            measurement("score_sum", total, "probability", name, "sum of the softmax scores", self.w, at),
            measurement("classify_latency_ms", ms, "ms", name, "one Classify call, 2 images, all labels", self.w, at),
        ], data, self.w, at)

    async def embedding(self) -> ProbeResult:
        """Layers 0..N of one image, then its final normalised embedding twice, and another image's."""
        name, at = "vit.embedding", now_iso()
        layers = list(range(self.info.response.num_hidden_layers + 1))
        req = vit_pb2.EmbedRequest(images=images_of([2]), layers=layers, pooling=vit_pb2.POOLING_CLS)
        reply, _ = await self._timed("Embed", req)
        widths = [len(e.values) for e in reply.results[0].embeddings]
        final = vit_pb2.EmbedRequest(images=images_of([2, 3]), pooling=vit_pb2.POOLING_CLS, normalize=True)
        (first, _), (second, _) = await self._timed("Embed", final), await self._timed("Embed", final)
        expect(all(len(r.embeddings) == 1 for r in [*first.results, *second.results]),
               "Embed without layers answered other than one vector per image")
        a, b = list(first.results[0].embeddings[0].values), list(second.results[0].embeddings[0].values)
        other = list(first.results[1].embeddings[0].values)
        norm = math.sqrt(sum(v * v for v in a))
        data = {"layers_asked": len(layers), "layers": len(widths), "widths": sorted(set(widths)), "width": len(a),
                "dimension": first.dimension, "advertised": self.info.response.hidden_size, "repeatable": a == b,
                "max_jitter": max((abs(x - y) for x, y in zip(a, b, strict=False)), default=0.0), "norm": norm,
                "differs": len(a) != len(other) or math.dist(a, other) > SAME, "batch": 1, "resolution": 224}
        detail = (f"asked for layers 0..{layers[-1]} of one image: got {len(widths)} vectors of widths "
                  f"{data['widths']}; the final normalised embedding measured {len(a)} wide (the reply says "
                  f"{first.dimension}, GetModelInfo {data['advertised']}), norm {norm:.4f}; asked twice: "
                  + ("identical" if a == b else f"DIFFERENT (max difference {data['max_jitter']:.3g})")
                  + f"; another image's vector: {'different' if data['differs'] else 'THE SAME'}")
        return ProbeResult(name, detail, [
            measurement("embedding_width", len(a), "dims", name, "measured length of the final embedding", self.w, at),
            measurement("layers_reachable", len(widths), "count", name, "hidden-state layers returned (0..N)",
                        self.w, at),
        ], data, self.w, at)

    async def batching(self) -> ProbeResult:
        """The same 10 images one by one and as one batch: the same answers in the same order; throughput."""
        name, at, n = "vit.batching", now_iso(), self.top_k()
        images = images_of(range(10, 10 + BATCH))
        await self._call("Classify", vit_pb2.ClassifyRequest(images=images[:1], top_k=n))  # warm
        singles = [await self._timed("Classify", vit_pb2.ClassifyRequest(images=[img], top_k=n)) for img in images]
        batch = vit_pb2.ClassifyRequest(images=images, top_k=n)
        batches = [await self._timed("Classify", batch) for _ in range(BATCH_CALLS)]
        one = [distribution_of(reply.results[0]) for reply, _ in singles]
        together = [distribution_of(c) for c in batches[0][0].results]
        # answer i of the batch must be (within numeric noise) the single answer for image i, and no closer to
        # the single answer of another image: an out-of-order batch fails here
        misplaced = [i for i, got in enumerate(together)
                     if l1(got, one[i]) > min(0.02, min(l1(got, s) for s in one) + 1e-9)]
        apart = min(l1(one[i], one[j]) for i in range(BATCH) for j in range(i + 1, BATCH))
        p50 = statistics.median(ms for _, ms in singles)
        batch_ms = statistics.median(ms for _, ms in batches)
        ratio = (BATCH / batch_ms) / (1 / p50)
        data = {"misplaced": misplaced, "images": BATCH, "ratio": ratio, "p50": p50, "batch": BATCH,
                "distinguishable": apart > SAME, "resolution": 224}
        detail = (f"{BATCH} images one by one (p50 {p50:.1f} ms) and as one batch of {BATCH} (median of "
                  f"{BATCH_CALLS}: {batch_ms:.1f} ms): "
                  + ("every batch answer equals its single-image answer, in order" if not misplaced else
                     f"batch answers {misplaced} are NOT the single-image answers for those images (order or content)")
                  + ("" if data["distinguishable"] else "; the single answers of different images are THE SAME")
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
        req = vit_pb2.ClassifyRequest(images=images_of(range(30, 30 + PRECISION_IMAGES)), top_k=1)
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
        detail = (f"{component} reports precision {reported} (configured as {precision}); {PRECISION_IMAGES} images "
                  f"through {base} (fp32) and {component}: top-1 agreement {agree:.1%}; 8 images x "
                  f"{PRECISION_TIMED_CALLS} timed calls each, median {statistics.median(ref_ms):.0f} ms vs "
                  f"{statistics.median(other_ms):.0f} ms: {speedup:.2f}x")
        return ProbeResult(name, detail, [
            measurement(f"{precision}_speedup", speedup, "x", name, f"{precision} vs fp32: ratio of the medians of "
                        f"{PRECISION_TIMED_CALLS} timed calls of 8 images", self.w, at),
            measurement(f"{precision}_top1_agreement", agree, "fraction", name,
                        f"top-1 agreement of {precision} with fp32 on {PRECISION_IMAGES} images", self.w, at),
        ], data, self.w, at)
