"""The ViT service's checks: their judgements, their plans, and their rows of the table.

Every figure a judgement expects (label count and label set, layers, width) comes from the catalog entry
of the model whose claim is checked (``ranker.v1.Architecture``); where the catalog states none the
judgement is UNDECIDED, "no published figure to check against". What the service reports of itself only
says how to call it; a reported figure that disagrees with the observed one is a fault shown on the row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from versus.ranker.v1 import ranker_pb2

from services.gateway.compare import vit_observe, vit_transfer
from services.gateway.compare.check import Check, Job
from services.gateway.compare.probes import unavailable
from services.gateway.compare.verdicts import NO_FIGURE, UNDECIDED, Verdict, at_least, int8, verdict
from services.gateway.compare.vit_probes import VitProbes

if TYPE_CHECKING:
    from services.gateway.compare.probes import ProbeResult
    from services.gateway.compare.run import Run, Served


def _decline(problems: list[str], missing: bool, holds: str) -> Verdict:
    """Contradicted on any problem; else undecided when the catalog states no figure; else verified."""
    if not problems and missing:
        return Verdict(UNDECIDED, f"{NO_FIGURE} ({holds}, but the catalog states no figure to compare with)")
    return verdict(problems, holds)


# -- judgements: what was observed → a verdict ------------------------------------------------------------
def _distribution(d: dict[str, Any]) -> Verdict:
    problems = [f"{d['distinct']} distinct label indices among {d['labels']} scores"] \
        if d["distinct"] != d["labels"] else []
    problems += [f"the scores sum to {d['sum']:.4f}, not 1"] if abs(d["sum"] - 1.0) > 1e-3 else []
    problems += [f"top-1 is index {d['top1']}, the logits' argmax is {d['argmax']}"] if d["top1"] != d["argmax"] else []
    problems += ["the scores are not in descending order"] if not d["sorted"] else []
    problems += ["two different images got the same answer: the answer ignores the image"] if not d["differs"] else []
    if d["asked"] == d["reported"] and d["labels"] != d["reported"]:
        problems.append(f"GetModelInfo reports {d['reported']} labels, {d['labels']} answered")
    if d["expected"] and d["labels"] != d["expected"]:
        problems.append(f"{d['labels']} labels, the catalog's checkpoint has {d['expected']} ({d['source']})")
    elif d["expected_sha256"] and d["labels_sha256"] != d["expected_sha256"]:
        problems.append(f"the label names (sha256 {d['labels_sha256'][:12]}) are not the catalog checkpoint's "
                        f"(sha256 {d['expected_sha256'][:12]}, {d['source']})")
    return _decline(problems, not d["expected"] or not d["expected_sha256"],
                    f"a distribution over the catalog checkpoint's {d['labels']} labels, summing to 1, whose top-1 is "
                    "the logits' argmax, different for different images")


def _embedding(d: dict[str, Any]) -> Verdict:
    problems = [f"{d['layers']} of {d['layers_asked']} layers returned"] if d["layers"] != d["layers_asked"] else []
    problems += [f"layer vectors of widths {d['widths']} beside a final one of {d['width']}"] \
        if d["widths"] != [d["width"]] else []
    problems += [f"measured width {d['width']}, but the reply says {d['dimension']} and GetModelInfo "
                 f"{d['advertised']}"] if not d["width"] == d["dimension"] == d["advertised"] else []
    problems += [f"the same request gave different vectors (max difference {d['max_jitter']:.3g})"] \
        if not d["repeatable"] else []
    problems += [f"a normalised vector of norm {d['norm']:.4f}"] if abs(d["norm"] - 1.0) > 1e-3 else []
    problems += ["two different images got the same vector: the embedding ignores the image"] \
        if not d["differs"] else []
    return verdict(problems, f"{d['width']}-wide vectors from every layer, normalised, identical on repeat, "
                             "different for different images")


def _batching(d: dict[str, Any]) -> Verdict:
    if not d["misplaced"] and not d["distinguishable"]:
        return Verdict(UNDECIDED, "the single answers cannot tell the images apart, so their order is unobservable")
    return verdict([f"batch answers {d['misplaced']} are not the single-image answers for those images"]
                   if d["misplaced"] else [], f"a batch of {d['images']} gets the single-image answers, in order")


def _continuity(d: dict[str, Any]) -> Verdict:
    n = d["pairs"]
    return verdict([f"a copy with ±{d['noise']} levels of pixel noise was not closer than a different image in "
                    f"{n - d['held']}/{n} pairs ({d['what']}): an answer computed from the bytes, not the picture"]
                   if d["held"] < n else [],
                   f"a ±{d['noise']}-level copy stays closer than a different image in all {n} pairs ({d['what']}, "
                   f"worst {d['worst_ratio']:.1%})")


def _transfer(d: dict[str, Any]) -> Verdict:
    n, alpha = d["held_out"], d["alpha"]
    said = (f"head {d['head_right']}/{n} (p={d['head_p']:.2g}), the gateway's probe {d['probe_right']}/{n} "
            f"(p={d['probe_p']:.2g}), baseline {d['baseline_right']}/{n}")
    if d["probe_p"] >= alpha:
        return Verdict(UNDECIDED, f"{said}: the embeddings themselves do not separate the textures beyond the "
                                  "mean-pixel baseline, so the head cannot be judged")
    return verdict([f"{said}: the embeddings separate the textures, the service's head does not beat the mean-pixel "
                    f"baseline (McNemar exact, alpha {alpha:g})"] if d["head_p"] >= alpha else [],
                   f"{said}: the head beats the mean-pixel baseline (McNemar exact, alpha {alpha:g})")


def _precision(d: dict[str, Any]) -> Verdict:
    return Verdict(UNDECIDED, f"the deployment reports {d['reported']} (configured as {d['asked']}), shown as "
                              "reported; the precision itself is decided only by the measured speed-up and "
                              "agreement against fp32")


def _architecture(d: dict[str, Any]) -> Verdict:
    e = d["expected"]
    seen = f"{d['layers']} layers, {d['width']} wide, {d['labels']} labels"
    problems = [f"layer {d['reported_layers'] + 1} answered, beyond the {d['reported_layers']} layers the service "
                "reports"] if not d["layer_beyond_refused"] else []
    problems += [f"{d['width']} wide, GetModelInfo reports {d['reported_width']}"] \
        if d["width"] != d["reported_width"] else []
    figures = [("layers", d["layers"]), ("width", d["width"]), ("labels", d["labels"])]
    stated = {k: e.get(k, 0) for k, _ in figures}
    problems += [f"{k} {v}, the catalog's checkpoint has {stated[k]} ({e['source']})" for k, v in figures
                 if stated[k] and v != stated[k]]
    return _decline(problems, not all(stated.values()), f"{seen}: the catalog checkpoint's architecture")


# -- plans: what to run on one served model -----------------------------------------------------------------
def expected(run: Run, served: Served) -> ranker_pb2.Architecture | None:
    entry = run.catalog.get(served.model_id)
    return entry.architecture if entry is not None and entry.HasField("architecture") else None


def _one(probe: Callable[[VitProbes], Awaitable[ProbeResult]]) -> Callable[[Run, Served], list[Job]]:
    def plan(run: Run, served: Served) -> list[Job]:
        assert run.vit is not None
        vp = VitProbes(run.ds, run.vit, run.probe_budget, expected(run, served))
        return [Job(run=lambda: probe(vp))]
    return plan


def _precision_jobs(run: Run, served: Served) -> list[Job]:
    """One job per other configured precision, each against an fp32 deployment (chosen by configuration:
    the deployment's reported precision never decides which one is the base)."""
    assert run.vit is not None
    vp, w = VitProbes(run.ds, run.vit, run.probe_budget), served.weights
    targets = run.settings.precision_targets
    base = "vit-fp32" if "fp32" in targets else "vit"
    others = {p: t for p, t in targets.items() if p != "fp32"}
    if not others:
        return [Job(result=unavailable("vit.precision", "no other precision is configured to compare with "
                                                        "(GATEWAY_VIT_PRECISIONS)", w))]
    return [Job(f"vit.precision.{p}@{target}", run=lambda p=p: vp.precision(f"vit-{p}", p, base))
            for p, target in others.items()]


# -- the table's ViT rows -------------------------------------------------------------------------------------
DISTRIBUTION = Check(
    "vit.distribution", "vit", ("imagenet-1k-classification",),
    "a probability distribution over the catalog checkpoint's labels whose top-1 is the logits' argmax, "
    "different for different images",
    "any weights; 2 images, 224 px; label count and set from the catalog",
    "Classify 2 different images, top_k = the catalog's label count, with logits",
    "a label count or label set other than the catalog's (1-label, 10-label classifiers), scores not summing "
    "to 1, top-1 not the argmax, unsorted scores, an answer that ignores the image (a constant classifier)",
    "that the scores come from a network (a hash of the image with the right labels passes)", _distribution,
    _one(lambda vp: vp.distribution()))
EMBEDDING = Check(
    "vit.embedding", "vit", ("embedding-extraction",),
    "embeddings of one measured width from every layer, normalised, identical on repeat, different for "
    "different images", "any weights; 2 images", "Embed layers 0..N, then the final normalised vectors twice",
    "missing layers, truncated vectors, width unlike the reply/GetModelInfo, jitter, wrong norm, a vector that "
    "ignores the image", "that the vectors come from a network (a hash of the bytes is as repeatable), or the "
    "catalog checkpoint's width (the architecture row says that)", _embedding, _one(lambda vp: vp.embedding()))
_PAIRS = (f"any weights; {vit_observe.CONTINUITY_PAIRS} pairs, ±{vit_observe.NOISE_LEVELS} levels of pixel noise "
          f"(seed {vit_observe.NOISE_SEED}), 224 px")
_COARSE = "anything against a fake that hashes a coarse downsample of the image"
CONTINUITY_SCORES = Check(
    "vit.continuity-scores", "vit", ("imagenet-1k-classification",),
    "a slightly perturbed image gets scores closer than a different image's", _PAIRS,
    f"Classify {vit_observe.CONTINUITY_PAIRS + 1} images and a noisy copy of {vit_observe.CONTINUITY_PAIRS}",
    "scores computed from a hash of the image bytes", _COARSE, _continuity, _one(vit_observe.continuity_scores))
CONTINUITY_EMBEDDING = Check(
    "vit.continuity-embedding", "vit", ("embedding-extraction",),
    "a slightly perturbed image gets an embedding closer than a different image's", _PAIRS,
    f"Embed {vit_observe.CONTINUITY_PAIRS + 1} images and a noisy copy of {vit_observe.CONTINUITY_PAIRS}",
    "embeddings computed from a hash of the image bytes", _COARSE, _continuity,
    _one(vit_observe.continuity_embedding))
BATCHING = Check(
    "vit.batching", "vit", ("batch-inference",),
    "a batch gets the single-image answers in order (throughput measured against batch 1)",
    "any weights; the deployment's device and precision; batch 10 vs 1, 224 px",
    "10 images one by one, then as one batch (x2, median)", "a batch answer that is not its image's",
    "anything about the device it runs on (reported only); undecided when single answers cannot tell images apart",
    _batching, _one(lambda vp: vp.batching()),
    decides={"batch10_throughput_ratio": at_least("batch10_throughput_ratio")})
TRANSFER = Check(
    "vit.transfer", "vit", ("fine-tuning",),
    "a head trained on its embeddings separates textures that mean colour cannot (transfer learning)",
    f"any weights; {2 * vit_transfer.TRAIN_PER_CLASS} training and {2 * vit_transfer.HELD_OUT_PER_CLASS} held-out "
    f"period-{vit_transfer.PERIOD} stripe images, seeded shuffle",
    "CreateHead, Classify with the head, DeleteHead; the gateway's own linear probe on Embed vectors and a "
    "nearest-mean-pixel baseline on the same split, McNemar exact",
    "a head that ignores the embeddings (a nearest-mean-colour head, a constant head)",
    "that the head is linear (any head reading the embeddings passes); undecided when the embeddings themselves "
    "do not separate the textures (tiny builds)", _transfer, _one(vit_transfer.transfer))
PRECISION = Check(
    "vit.precision", "vit", ("quantization-onnx-export",),
    "the int8 deployment's speed-up and top-1 agreement against fp32 (the reported precision is shown as reported)",
    "speed: any weights, the deployments' device; agreement: real or operator-attested weights",
    "GetModelInfo of the other deployment; 32 images through both; 5 alternated timed calls of 8 each",
    "a speed-up below the claim, agreement below the bar (on weights that may decide)",
    "the precision it computes at (an fp32 model that reports int8 is caught only by its speed)", _precision,
    _precision_jobs, decides={"int8_speedup": int8})
ARCHITECTURE = Check(
    "vit.architecture", "vit", (),
    "layers, width and labels, measured from the vectors, are the catalog checkpoint's",
    "any weights; 1 image; figures from the catalog", "Embed layers 0..N and N+1, Classify all labels",
    "another architecture than the catalog's (a tiny build, a 10-label model), a reported width or layer count "
    "unlike the observed one", "that the weights are the checkpoint's (a random-weight build passes)",
    _architecture, _one(vit_observe.architecture), title="Architecture")
VIT_CHECKS = (DISTRIBUTION, EMBEDDING, CONTINUITY_SCORES, CONTINUITY_EMBEDDING, BATCHING, ARCHITECTURE, TRANSFER,
              PRECISION)
