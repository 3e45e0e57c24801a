"""Cross-model quality and the head-to-head: SD3.5 draws "a photo of a {class}", the ViT service judges.

Top-1/top-5 hit rates of the prompted ImageNet class are the prompt-adherence evidence; for two
generators, the same prompt and seed are a duel decided by the judge's probability of the prompted
class (a tie when ``|ln p_a − ln p_b|`` is below the margin). Duels are recorded in the ranker with an
idempotency key derived from what decides the outcome — the pair, the prompt, the seed, the weights
digests of both generators and of the judge, the image size and steps — so a retried comparison (or a
new one that would only repeat the same deterministic duel) never counts twice, while new weights do.
On weights that are not real the duels go to a "mechanism." task (the duels themselves: ``duels``).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
from dataclasses import dataclass

from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2
from versus.vit.v1 import vit_pb2

from services.common.errors import InvalidArgument, quote
from services.common.stats import wilson
from services.gateway.compare import cached
from services.gateway.compare.checks import ADHERENCE_BAR, QUALITY
from services.gateway.compare.probes import (
    DECIDING_KINDS,
    ProbeResult,
    expect,
    measurement,
    now_iso,
    unavailable,
)
from services.gateway.compare.run import Run, Served
from services.gateway.compare.sd35_checks import sd35_probes
from services.gateway.compare.verdicts import NO_FIGURE
from services.gateway.compare.vit_probes import VitProbes, labels_digest
from services.gateway.config import ServedBy
from services.gateway.stats import images_to_verify

TASK = "t2i-imagenet-judge"
MECHANISM_TASK = "mechanism." + TASK
#: Generations in flight per SD3.5 service from one comparison (its queue refuses beyond max_queue).
GENERATE_CONCURRENCY = 2


def prompt_for(imagenet_class: str) -> str:
    return f"a photo of a {imagenet_class}"


def class_index(labels: list[str], imagenet_class: str) -> int:
    """Index of the judge label naming ``imagenet_class`` (any of its comma-separated synonyms), or -1."""
    wanted = imagenet_class.strip().lower()
    for i, label in enumerate(labels):
        if wanted in (part.strip().lower() for part in label.split(",")):
            return i
    return -1


@dataclass(frozen=True)
class Judged:
    """The judge's view of one generated image."""

    top1_label: str
    class_probability: float
    rank: int  # 1-based rank of the prompted class among all labels


def judge(scores: list[tuple[int, str, float]], target: int) -> Judged:
    """``scores``: (index, label, probability) over all labels, best first."""
    rank = next((r for r, (i, _, _) in enumerate(scores, 1) if i == target), len(scores) + 1)
    prob = next((p for i, _, p in scores if i == target), 0.0)
    return Judged(scores[0][1], prob, rank)


def summarise(judgements: list[gateway_pb2.Judgement], generator: str, mechanism: bool, requested: int = 0,
              lost: int = 0) -> gateway_pb2.QualitySummary:
    """Hit rates with Wilson 95% intervals. Judgements that failed by fault are misses (counted); images
    lost to an outage are not judgements (``lost``)."""
    mine = [j for j in judgements if j.generator == generator]
    n = len(mine)
    top1, top5 = sum(j.top1_hit for j in mine), sum(j.top5_hit for j in mine)
    s = gateway_pb2.QualitySummary(
        generator=generator, images=n, top1_hit_rate=top1 / n if n else 0.0, top5_hit_rate=top5 / n if n else 0.0,
        mean_class_probability=sum(j.class_probability for j in mine) / n if n else 0.0, mechanism_only=mechanism,
        requested=requested or n + lost, lost=lost, failed=sum(1 for j in mine if j.error))
    s.top1_ci_low, s.top1_ci_high = wilson(top1, n)
    s.top5_ci_low, s.top5_ci_high = wilson(top5, n)
    if mine:
        first = mine[0]
        s.judge_id, s.judge_digest, s.generator_digest = first.judge_id, first.judge_digest, first.generator_digest
        s.judged_at = max(j.judged_at for j in mine)
    return s


# -- the stage ------------------------------------------------------------------------------------------
def _generators(run: Run) -> list[str]:
    def generates(served: Served) -> bool:  # an SD3.5 variant whose GetModelInfo answered
        return served.by.t2i and served.info_error is None and served.by.variant in run.variants

    t2i = [m for m in run.opts.model_ids if m in run.served and generates(run.served[m])]
    if run.opts.head_to_head:
        for model_id, by in run.settings.served.items():
            if by.t2i and by.variant in run.variants and model_id not in t2i:
                run.served.setdefault(model_id, Served(model_id, by, run.variants[by.variant].weights))
                t2i.append(model_id)
    return t2i


def _judge_architecture(run: Run) -> ranker_pb2.Architecture | None:
    """The catalog's architecture of the checkpoint the ViT service serves (the judge), or None."""
    model_id = next((m for m, by in run.settings.served.items() if by == ServedBy("vit")), "")
    entry = run.catalog.get(model_id)
    return entry.architecture if entry is not None and entry.HasField("architecture") else None


async def _judge_labels(run: Run) -> tuple[list[str], str]:
    """The judge's label names by index, and why none when empty. The count is the catalog checkpoint's, and
    the names the service returns must hash to the catalog's label digest: only then are its indices the
    catalog's classes (the service's own num_labels and names decide nothing)."""
    assert run.vit is not None
    vit, arch = run.vit, _judge_architecture(run)
    if arch is None or not arch.num_labels or not arch.labels_sha256:
        return [], f"{NO_FIGURE}: the catalog states no label set for the judge's checkpoint"
    n, vp = arch.num_labels, VitProbes(run.ds, vit, run.probe_budget, arch)

    async def fetch() -> ProbeResult:
        reply = await vp._call("Classify", vit_pb2.ClassifyRequest(images=[_blank_png()], top_k=n))
        labels = [""] * n
        for lab in reply.results[0].labels:
            if 0 <= lab.index < n:
                labels[lab.index] = lab.label
        return ProbeResult("vit.labels", "", [], {"labels": labels}, vit.weights, now_iso())

    result = await cached.probe(run, "vit", vit.weights, "vit.labels", fetch)
    if result is None or not result.ran:
        return [], "the ViT judge's labels could not be read"
    labels = result.data.get("labels", [])
    if "" in labels or labels_digest(labels) != arch.labels_sha256:
        return [], (f"the judge's {n} labels (sha256 {labels_digest(labels)[:12]}, {labels.count('')} missing) are not "
                    f"the catalog checkpoint's (sha256 {arch.labels_sha256[:12]}, {arch.labels_source})")
    return labels, ""


async def choose_classes(run: Run) -> None:
    """The ImageNet classes of the quality probe, as the judge names them. A class the client sent that
    is not a judge label is INVALID_ARGUMENT; a default from the config that is not is dropped (noted)."""
    run.classes = []
    run.generators = _generators(run)
    if not run.generators:
        return
    if run.vit is None:
        run.unavailable("quality", "no ViT judge is reachable: cross-model quality and head-to-head skipped")
        return
    run.labels, why = await _judge_labels(run)
    if not run.labels:
        if run.opts.live:
            run.unavailable("quality", why)
        return  # not live and nothing cached: no quality evidence this time
    from_client = run.opts.classes != run.settings.classes
    for i, name in enumerate(run.opts.classes):
        index = class_index(run.labels, name)
        if index >= 0:
            run.classes.append(run.labels[index].split(",")[0].strip())
        elif from_client:
            raise InvalidArgument(f"probes.imagenet_classes[{i}]",
                                  f"{quote(name)} is not a label of the judge ({run.vit.response.model.id})")
        else:
            run.c.notes.append(f"The default class {name!r} is not a label of the judge; it was skipped.")


def images_per_class(run: Run) -> int:
    """The client's number, else the config's, else (0 = auto) enough for a perfect generator to verify."""
    if run.opts.per_class:
        return run.opts.per_class
    return max(1, math.ceil(images_to_verify(ADHERENCE_BAR) / max(1, len(run.classes))))


async def judge_generations(run: Run) -> None:
    generators = run.generators if run.classes else []
    if not generators:
        return
    assert run.vit is not None
    gate = asyncio.Semaphore(GENERATE_CONCURRENCY)  # the SD3.5 queue would refuse a larger burst
    per_class = images_per_class(run)
    jobs = [(g, c, run.cfg.probe_seed + k) for g in generators for c in run.classes for k in range(per_class)]
    run.progress("quality", f"{len(jobs)} images: 'a photo of a {{class}}' judged by the ViT service", 0.55)
    lost: dict[str, int] = {}

    async def one(generator: str, cls: str, seed: int) -> None:
        async with gate:
            judged = await _judgement(run, generator, cls, seed)
        if judged is None:
            lost[generator] = lost.get(generator, 0) + 1
        else:
            run.judgements.append(judged)
        done = len(run.judgements) + sum(lost.values())
        run.progress("quality", f"{done}/{len(jobs)} judged", 0.55 + 0.25 * done / len(jobs))

    await asyncio.gather(*(one(*j) for j in jobs))
    run.judgements.sort(key=lambda j: (j.generator, j.imagenet_class, j.seed))
    run.c.judgements.extend(run.judgements)
    judge_ok = run.vit.weights.kind in DECIDING_KINDS
    for g in generators:
        w = run.served[g].weights
        summary = summarise(run.judgements, g, not (judge_ok and w.kind in DECIDING_KINDS),
                            per_class * len(run.classes), lost.get(g, 0))
        run.c.quality.append(summary)
        _quality_result(run, run.served[g], summary)


def _quality_result(run: Run, served: Served, s: gateway_pb2.QualitySummary) -> None:
    """The prompt-adherence check's observation (judged by checks.QUALITY)."""
    at = now_iso()
    if not s.images:
        served.results.append((QUALITY, unavailable(f"quality.{served.model_id}", f"all {s.requested} images were lost "
                                               "to outages (see unavailable)", served.weights)))
        return
    assert run.vit is not None
    w = gateway_pb2.ServedWeights()
    w.CopyFrom(served.weights)
    if run.vit.weights.kind not in DECIDING_KINDS:  # the pair decides only when both may
        w.kind = run.vit.weights.kind if w.kind in DECIDING_KINDS else w.kind
    detail = (f"{s.images} of {s.requested} images judged ({s.lost} lost to outages, {s.failed} failed by fault, "
              f"counted as misses) of 'a photo of a {{class}}' for {', '.join(run.classes)} by "
              f"{s.judge_id} ({run.vit.weights.kind} weights, sha256 {s.judge_digest[:12]}): top-1 hit "
              f"{s.top1_hit_rate:.0%} [{s.top1_ci_low:.2f}, {s.top1_ci_high:.2f}], top-5 hit {s.top5_hit_rate:.0%} "
              f"[{s.top5_ci_low:.2f}, {s.top5_ci_high:.2f}] (Wilson 95%), mean p(class) {s.mean_class_probability:.4f}")
    data = {"images": s.images, "top5_hits": round(s.top5_hit_rate * s.images), "top1_hits":
            round(s.top1_hit_rate * s.images)}
    served.results.append((QUALITY, ProbeResult(f"quality.{served.model_id}", detail, [
        measurement("prompt_top1_hit_rate", s.top1_hit_rate, "fraction", "quality", detail, w, at),
        measurement("prompt_top5_hit_rate", s.top5_hit_rate, "fraction", "quality", detail, w, at),
    ], data, w, at)))


async def _judgement(run: Run, generator: str, cls: str, seed: int) -> gateway_pb2.Judgement | None:
    """One generated image judged; None when an outage lost it. A fault (generation or judgement out of
    contract) is a judgement with ``error`` set: a miss that is shown."""
    served, vit = run.served[generator], run.vit
    assert vit is not None
    sp = sd35_probes(run, served.by.variant)
    prompt = prompt_for(cls)
    gen_probe = f"sd35.{served.by.variant}.image.{seed}.{prompt}"
    out = gateway_pb2.Judgement(generator=generator, imagenet_class=cls, prompt=prompt, seed=seed,
                                judge_id=vit.weights.served_model_id, judge_digest=vit.weights.digest,
                                generator_digest=served.weights.digest)

    async def generate() -> ProbeResult:
        g = await sp.generate(prompt, seed)
        return ProbeResult(gen_probe, "", [], {"png": g.png, "w": g.decoded[0], "h": g.decoded[1]},
                           served.weights, now_iso())

    image = await cached.probe(run, str(served.by), served.weights, gen_probe, generate, kind="sd35.image")
    if image is None or not image.observed:
        return _lost_or_failed(run, out, image)
    png = image.data["png"]
    out.image_png, out.width, out.height = png, image.data["w"], image.data["h"]
    vp = VitProbes(run.ds, vit, run.probe_budget)
    judge_probe = f"vit.judge.{hashlib.sha256(png).hexdigest()[:24]}"

    async def classify() -> ProbeResult:
        reply = await vp._call("Classify", vit_pb2.ClassifyRequest(images=[common_pb2.Image(data=png)],
                                                                    top_k=len(run.labels)))
        expect(len(reply.results) == 1 and len(reply.results[0].labels) > 0, "Classify answered no labels")
        scores = [(lab.index, lab.label, lab.score) for lab in reply.results[0].labels]
        return ProbeResult(judge_probe, "", [], {"scores": scores}, vit.weights, now_iso())

    judged = await cached.probe(run, "vit", vit.weights, judge_probe, classify, kind="vit.judge")
    if judged is None or not judged.observed:
        return _lost_or_failed(run, out, judged)
    j = judge(judged.data["scores"], class_index(run.labels, cls))
    out.top1_label, out.class_probability, out.top1_hit, out.top5_hit = j.top1_label, j.class_probability, \
        j.rank == 1, j.rank <= 5
    out.judged_at = judged.at
    return out


def _lost_or_failed(run: Run, out: gateway_pb2.Judgement, result: ProbeResult | None
                    ) -> gateway_pb2.Judgement | None:
    if result is not None and result.fault:
        out.error, out.judged_at = result.fault, result.at
        return out
    if result is not None and result.unavailable is not None:
        run.add_unavailable(result.unavailable)
    return None


def _blank_png() -> common_pb2.Image:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (224, 224), (127, 127, 127)).save(buf, format="PNG")
    return common_pb2.Image(data=buf.getvalue(), mime_type="image/png")
