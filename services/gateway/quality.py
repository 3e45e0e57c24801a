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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.vit.v1 import vit_pb2

from services.common.errors import InvalidArgument, quote
from services.gateway.probes import ProbeResult, VitProbes, measurement, now_iso

if TYPE_CHECKING:
    from services.gateway.run import Run, Served

TASK = "t2i-imagenet-judge"
MECHANISM_TASK = "mechanism." + TASK
QUALITY_TOP5_BAR = 0.5
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


def summarise(judgements: list[gateway_pb2.Judgement], generator: str, mechanism: bool) -> gateway_pb2.QualitySummary:
    mine = [j for j in judgements if j.generator == generator]
    n = len(mine)
    return gateway_pb2.QualitySummary(
        generator=generator, images=n, top1_hit_rate=sum(j.top1_hit for j in mine) / n if n else 0.0,
        top5_hit_rate=sum(j.top5_hit for j in mine) / n if n else 0.0,
        mean_class_probability=sum(j.class_probability for j in mine) / n if n else 0.0, mechanism_only=mechanism)


# -- the stage ------------------------------------------------------------------------------------------
def _generators(run: Run) -> list[str]:
    from services.gateway.run import Served

    t2i = [m for m in run.opts.model_ids if m in run.served and run.is_t2i(m)]
    if run.opts.head_to_head:
        for model_id, service in run.gw.served.items():
            if service.startswith("sd35/") and service[5:] in run.variants and model_id not in t2i:
                run.served.setdefault(model_id, Served(model_id, service, run.variants[service[5:]].weights))
                t2i.append(model_id)
    return t2i


async def _judge_labels(run: Run) -> list[str]:
    assert run.vit is not None
    vit = run.vit
    n = vit.response.num_labels
    vp = VitProbes(run.ds, vit, run.probe_budget)

    async def fetch() -> ProbeResult:
        reply = await vp._call("Classify", vit_pb2.ClassifyRequest(images=[_blank_png()], top_k=n))
        labels = [""] * n
        for lab in reply.results[0].labels:
            labels[lab.index] = lab.label
        return ProbeResult("vit.labels", True, "", [], {"labels": labels}, vit.weights, now_iso())

    result = await run.probe("vit", vit.weights, "vit.labels", fetch)
    return result.data.get("labels", []) if result is not None and result.ran else []


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
    run.labels = await _judge_labels(run)
    if not run.labels:
        if run.opts.live:
            run.unavailable("quality", "the ViT judge's labels could not be read")
        return  # not live and nothing cached: no quality evidence this time
    from_client = run.opts.classes != tuple(run.cfg.classes())
    for i, name in enumerate(run.opts.classes):
        index = class_index(run.labels, name)
        if index >= 0:
            run.classes.append(run.labels[index].split(",")[0].strip())
        elif from_client:
            raise InvalidArgument(f"probes.imagenet_classes[{i}]",
                                  f"{quote(name)} is not a label of the judge ({run.vit.response.model.id})")
        else:
            run.c.notes.append(f"The default class {name!r} is not a label of the judge; it was skipped.")


async def judge_generations(run: Run) -> None:
    generators = run.generators if run.classes else []
    if not generators:
        return
    gate = asyncio.Semaphore(GENERATE_CONCURRENCY)  # the SD3.5 queue would refuse a larger burst
    jobs = [(g, c, run.cfg.probe_seed + k) for g in generators for c in run.classes
            for k in range(run.opts.per_class)]
    run.progress("quality", f"{len(jobs)} images: 'a photo of a {{class}}' judged by the ViT service", 0.55)
    done = 0

    async def one(generator: str, cls: str, seed: int) -> None:
        nonlocal done
        async with gate:
            judged = await _judgement(run, generator, cls, seed)
        done += 1
        if judged is not None:
            run.judgements.append(judged)
        run.progress("quality", f"{done}/{len(jobs)} judged", 0.55 + 0.25 * done / len(jobs))

    await asyncio.gather(*(one(*j) for j in jobs))
    run.judgements.sort(key=lambda j: (j.generator, j.imagenet_class, j.seed))
    run.c.judgements.extend(run.judgements)
    assert run.vit is not None
    judge_real = run.vit.weights.kind == "real"
    for g in generators:
        w = run.served[g].weights
        summary = summarise(run.judgements, g, mechanism=not (judge_real and w.kind == "real"))
        run.c.quality.append(summary)
        if summary.images:
            _quality_probe(run, run.served[g], summary)


def _quality_probe(run: Run, served: Served, s: gateway_pb2.QualitySummary) -> None:
    at = now_iso()
    w = gateway_pb2.ServedWeights()
    w.CopyFrom(served.weights)
    if run.vit is not None and run.vit.weights.kind != "real":
        w.kind = run.vit.weights.kind if w.kind == "real" else w.kind
    detail = (f"{s.images} images of 'a photo of a {{class}}' for {', '.join(run.classes)} judged by "
              f"{run.vit.response.model.id if run.vit else 'vit'} ({run.vit.weights.kind if run.vit else '?'} "
              f"weights): top-1 hit {s.top1_hit_rate:.0%}, top-5 hit {s.top5_hit_rate:.0%}, mean p(class) "
              f"{s.mean_class_probability:.4f}")
    # On real weights the claim holds when the judge finds the prompted class in the top 5 of at least
    # half the images; on other weights this is a mechanism check and never decides the mark.
    served.probes["quality"] = ProbeResult(f"quality.{served.model_id}", s.top5_hit_rate >= QUALITY_TOP5_BAR,
                                           detail, [
        measurement("prompt_top1_hit_rate", s.top1_hit_rate, "fraction", "quality", detail, w, at),
        measurement("prompt_top5_hit_rate", s.top5_hit_rate, "fraction", "quality", detail, w, at),
    ], {}, w, at)


async def _judgement(run: Run, generator: str, cls: str, seed: int) -> gateway_pb2.Judgement | None:
    from services.gateway.checks import sd35_probes

    served = run.served[generator]
    variant = served.service[5:]
    sp = sd35_probes(run, variant)
    prompt = prompt_for(cls)
    gen_probe = f"sd35.{variant}.image.{seed}.{prompt}"

    async def generate() -> ProbeResult:
        g = await sp.generate(prompt, seed)
        return ProbeResult(gen_probe, True, "", [], {"png": g.png, "w": g.width, "h": g.height},
                           served.weights, now_iso())

    image = await run.probe(served.service, served.weights, gen_probe, generate, kind="sd35.image")
    if image is None or not image.ran:
        if image is not None and image.unavailable is not None:
            run.add_unavailable(image.unavailable)
        return None
    assert run.vit is not None
    vit = run.vit
    png = image.data["png"]
    vp = VitProbes(run.ds, vit, run.probe_budget)
    judge_probe = f"vit.judge.{hashlib.sha256(png).hexdigest()[:24]}"

    async def classify() -> ProbeResult:
        reply = await vp._call("Classify", vit_pb2.ClassifyRequest(
            images=[common_pb2.Image(data=png)], top_k=vit.response.num_labels))
        scores = [(lab.index, lab.label, lab.score) for lab in reply.results[0].labels]
        return ProbeResult(judge_probe, True, "", [], {"scores": scores}, vit.weights, now_iso())

    judged_probe = await run.probe("vit", vit.weights, judge_probe, classify, kind="vit.judge")
    if judged_probe is None or not judged_probe.ran:
        if judged_probe is not None and judged_probe.unavailable is not None:
            run.add_unavailable(judged_probe.unavailable)
        return None
    target = class_index(run.labels, cls)
    j = judge(judged_probe.data["scores"], target)
    return gateway_pb2.Judgement(
        generator=generator, imagenet_class=cls, prompt=prompt, seed=seed, top1_label=j.top1_label,
        class_probability=j.class_probability, top1_hit=j.rank == 1, top5_hit=j.rank <= 5, image_png=png,
        width=image.data["w"], height=image.data["h"])


def _blank_png() -> common_pb2.Image:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (224, 224), (127, 127, 127)).save(buf, format="PNG")
    return common_pb2.Image(data=buf.getvalue(), mime_type="image/png")
