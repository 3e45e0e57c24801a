"""The ViT service's checks: their judgements, their plans, and their rows of the table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.gateway.compare.check import Check, Job
from services.gateway.compare.probes import VitProbes, unavailable
from services.gateway.compare.verdicts import Verdict, at_least, int8, verdict

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from services.gateway.compare.probes import ProbeResult
    from services.gateway.compare.run import Run, Served


# -- judgements: what was observed → a verdict ------------------------------------------------------------
def _distribution(d: dict[str, Any]) -> Verdict:
    problems = [f"{d['labels']} scores for {d['expected']} labels"] if d["labels"] != d["expected"] else []
    problems += [f"the scores sum to {d['sum']:.4f}, not 1"] if abs(d["sum"] - 1.0) > 1e-3 else []
    problems += [f"top-1 is index {d['top1']}, the logits' argmax is {d['argmax']}"] if d["top1"] != d["argmax"] else []
    problems += ["the scores are not in descending order"] if not d["sorted"] else []
    return verdict(problems, "a distribution over every label, summing to 1, whose top-1 is the logits' argmax")


def _embedding(d: dict[str, Any]) -> Verdict:
    problems = [f"{d['layers']} of {d['layers_asked']} layers returned"] if d["layers"] != d["layers_asked"] else []
    problems += [f"layer vectors of widths {d['widths']} beside a final one of {d['width']}"] \
        if d["widths"] != [d["width"]] else []
    problems += [f"measured width {d['width']}, but the reply says {d['dimension']} and GetModelInfo "
                 f"{d['advertised']}"] if not d["width"] == d["dimension"] == d["advertised"] else []
    problems += [f"the same request gave different vectors (max difference {d['max_jitter']:.3g})"] \
        if not d["repeatable"] else []
    problems += [f"a normalised vector of norm {d['norm']:.4f}"] if abs(d["norm"] - 1.0) > 1e-3 else []
    return verdict(problems, f"{d['width']}-wide vectors from every layer, normalised, identical on repeat")


def _batching(d: dict[str, Any]) -> Verdict:
    return verdict([f"batch answers {d['misplaced']} are not the single-image answers for those images"]
                   if d["misplaced"] else [], f"a batch of {d['images']} gets the single-image answers, in order")


def _transfer(d: dict[str, Any]) -> Verdict:
    return verdict([f"held-out examples classified {d['got']}, expected {d['expected']}"]
                   if d["got"] != d["expected"] else [], "the head classifies every held-out example")


def _precision(d: dict[str, Any]) -> Verdict:
    return verdict([f"asked for {d['asked']}, the deployment reports {d['reported']}"]
                   if d["reported"] != d["asked"] else [], f"serves {d['asked']} as configured")


# -- plans: what to run on one served model -----------------------------------------------------------------
def _one(probe: Callable[[VitProbes], Callable[[], Awaitable[ProbeResult]]]) -> Callable[[Run, Served], list[Job]]:
    def plan(run: Run, served: Served) -> list[Job]:
        assert run.vit is not None
        return [Job(run=probe(VitProbes(run.ds, run.vit, run.probe_budget)))]
    return plan


def _precision_jobs(run: Run, served: Served) -> list[Job]:
    """One job per other configured precision, each against an fp32 deployment."""
    assert run.vit is not None
    vp, w = VitProbes(run.ds, run.vit, run.probe_budget), served.weights
    targets = run.settings.precision_targets
    base = "vit" if w.precision == "fp32" else "vit-fp32" if "fp32" in targets else ""
    others = {p: t for p, t in targets.items() if p != "fp32"}
    if not base or not others:
        why = (f"this deployment serves {w.precision} only: no other precision is configured to compare with"
               if not others else f"this deployment serves {w.precision}: no fp32 deployment to time against")
        return [Job(result=unavailable("vit.precision", f"{why} (GATEWAY_VIT_PRECISIONS)", w))]
    return [Job(f"vit.precision.{p}@{target}", run=lambda p=p: vp.precision(f"vit-{p}", p, base))
            for p, target in others.items()]


# -- the table's ViT rows -------------------------------------------------------------------------------------
DISTRIBUTION = Check(
    "vit.distribution", "vit", ("imagenet-1k-classification",),
    "returns a probability distribution over all its labels whose top-1 is the logits' argmax",
    "any weights; 1 image, 224 px", "Classify 1 image, top_k = all labels, with logits",
    "wrong label count, scores not summing to 1, top-1 not the argmax, unsorted scores",
    "that the labels are the catalog's, or that the answer depends on the image", _distribution,
    _one(lambda vp: vp.distribution))
EMBEDDING = Check(
    "vit.embedding", "vit", ("embedding-extraction",),
    "embeddings of one measured width from every layer, normalised, identical on repeat",
    "any weights; 1 image", "Embed layers 0..N, then the final normalised vector twice",
    "missing layers, truncated vectors, width unlike the reply/GetModelInfo, jitter, wrong norm",
    "that the vectors come from a network (a hash of the bytes is as repeatable)", _embedding,
    _one(lambda vp: vp.embedding))
BATCHING = Check(
    "vit.batching", "vit", ("batch-inference",),
    "a batch gets the single-image answers in order (throughput measured against batch 1)",
    "any weights; the deployment's device and precision; batch 10 vs 1, 224 px",
    "10 images one by one, then as one batch (x2, median)", "a batch answer that is not its image's",
    "anything about the device it runs on", _batching, _one(lambda vp: vp.batching),
    decides={"batch10_throughput_ratio": at_least("batch10_throughput_ratio")})
TRANSFER = Check(
    "vit.transfer", "vit", ("fine-tuning",),
    "a linear head trained on its embeddings classifies held-out examples (transfer learning)",
    "any weights; 8 training and 4 held-out solid-colour images", "CreateHead, Classify with the head, DeleteHead",
    "a held-out example misclassified (e.g. predictions that ignore the head)",
    "that the head reads embeddings (a nearest-mean-colour head passes)", _transfer, _one(lambda vp: vp.transfer))
PRECISION = Check(
    "vit.precision", "vit", ("quantization-onnx-export",),
    "runs at the precision asked for (speed-up and top-1 agreement measured against fp32)",
    "speed: any weights, the deployments' device; agreement: real or operator-attested weights",
    "GetModelInfo of the other deployment; 32 images through both; 5 alternated timed calls of 8 each",
    "a reported precision other than the one configured",
    "the precision it computes at (an fp32 model that reports int8 passes)", _precision, _precision_jobs,
    decides={"int8_speedup": int8})
VIT_CHECKS = (DISTRIBUTION, EMBEDDING, BATCHING, TRANSFER, PRECISION)
