"""The live checks, declared in one table, and the stage of a comparison that runs them.

Each :class:`Check` states the claim it tests, the conditions its measurement holds under, what it
observes, how it fails, and a judgement from what it observed — VERIFIED_LIVE or CONTRADICTED (a
probe that could not run is UNAVAILABLE; a reply out of contract is CONTRADICTED before any judgement).
A judgement may also decline: ``Verdict(UNDECIDED, why)`` when the observation cannot speak to the
claim under this deployment's conditions. Nothing a service says about itself (GetModelInfo) is
judged here: those capabilities stay CLAIMED, "reported by the service", unless a source supports them.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from versus.gateway.v1 import gateway_pb2

from services.common.stats import wilson
from services.gateway.compare.probes import ProbeResult, VitProbes, measurement, now_iso, unavailable
from services.gateway.compare.sd35_probes import Sd35Probes
from services.gateway.config import ServedBy

if TYPE_CHECKING:
    from services.gateway.compare.run import Run, Served

VERIFIED = gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE
CONTRADICTED = gateway_pb2.EVIDENCE_MARK_CONTRADICTED
UNDECIDED = gateway_pb2.EVIDENCE_MARK_UNSPECIFIED
#: A live numeric claim is met within this relative tolerance ("~9x" is met by 8.1x).
LIVE_TOLERANCE = 0.10
#: int8 "< 1-2% accuracy loss": top-1 agreement with fp32 at least this, over PRECISION_IMAGES images.
AGREEMENT_BAR = 0.98
#: Prompt adherence: the Wilson 95% lower bound of the top-5 hit rate must clear this.
ADHERENCE_BAR = 0.5
#: Turbo against Large, same size and seed: Turbo runs 1/7 of Large's steps without CFG (1/14 of the
#: transformer passes); text encoding and the VAE decode are fixed costs, so the wall-clock speed-up is
#: below the step ratio, but a Turbo less than this much faster shows no benefit of its distillation.
TURBO_MIN_SPEEDUP = 2.0
#: Alternated Large/Turbo generations whose medians give the speed-up.
VS_LARGE_PAIRS = 3


@dataclass(frozen=True)
class Verdict:
    mark: int  # VERIFIED, CONTRADICTED or UNDECIDED
    why: str


def _verdict(problems: list[str], holds: str) -> Verdict:
    return Verdict(CONTRADICTED, "; ".join(problems)) if problems else Verdict(VERIFIED, holds)


# -- judgements: what was observed → a verdict ------------------------------------------------------------
def _distribution(d: dict[str, Any]) -> Verdict:
    problems = [f"{d['labels']} scores for {d['expected']} labels"] if d["labels"] != d["expected"] else []
    problems += [f"the scores sum to {d['sum']:.4f}, not 1"] if abs(d["sum"] - 1.0) > 1e-3 else []
    problems += [f"top-1 is index {d['top1']}, the logits' argmax is {d['argmax']}"] if d["top1"] != d["argmax"] else []
    problems += ["the scores are not in descending order"] if not d["sorted"] else []
    return _verdict(problems, "a distribution over every label, summing to 1, whose top-1 is the logits' argmax")


def _embedding(d: dict[str, Any]) -> Verdict:
    problems = [f"{d['layers']} of {d['layers_asked']} layers returned"] if d["layers"] != d["layers_asked"] else []
    problems += [f"layer vectors of widths {d['widths']} beside a final one of {d['width']}"] \
        if d["widths"] != [d["width"]] else []
    problems += [f"measured width {d['width']}, but the reply says {d['dimension']} and GetModelInfo "
                 f"{d['advertised']}"] if not d["width"] == d["dimension"] == d["advertised"] else []
    problems += [f"the same request gave different vectors (max difference {d['max_jitter']:.3g})"] \
        if not d["repeatable"] else []
    problems += [f"a normalised vector of norm {d['norm']:.4f}"] if abs(d["norm"] - 1.0) > 1e-3 else []
    return _verdict(problems, f"{d['width']}-wide vectors from every layer, normalised, identical on repeat")


def _batching(d: dict[str, Any]) -> Verdict:
    return _verdict([f"batch answers {d['misplaced']} are not the single-image answers for those images"]
                    if d["misplaced"] else [],
                    f"a batch of {d['images']} gets the single-image answers, in order")


def _transfer(d: dict[str, Any]) -> Verdict:
    return _verdict([f"held-out examples classified {d['got']}, expected {d['expected']}"]
                    if d["got"] != d["expected"] else [], "the head classifies every held-out example")


def _precision(d: dict[str, Any]) -> Verdict:
    return _verdict([f"asked for {d['asked']}, the deployment reports {d['reported']}"]
                    if d["reported"] != d["asked"] else [], f"serves {d['asked']} as configured")


def _generate(d: dict[str, Any]) -> Verdict:
    problems = [f"asked for {d['requested']}, decoded {d['decoded']} (the reply says {d['reported']})"] \
        if not d["requested"] == d["decoded"] == d["reported"] else []
    problems += ["the same request and seed gave different bytes"] if not d["deterministic"] else []
    return _verdict(problems, "the requested size, byte-identical for the same request and seed")


def _guidance(d: dict[str, Any]) -> Verdict:
    problems = ["guidance 0 and 4.5 gave identical images"] if not d["guidance_changes"] else []
    problems += ["a negative prompt left the image unchanged"] if not d["negative_changes"] else []
    return _verdict(problems, "guidance scale and negative prompts change the output")


def _resolution(d: dict[str, Any]) -> Verdict:
    problems = [f"{s}x{s} (inside the advertised limits) → {got}" for s, got in d["accepted"].items()
                if got != f"{s}x{s}"]
    problems += [f"{s}x{s} (outside them) → {got} {fields or ''}".strip() for s, (got, fields) in d["refused"].items()
                 if got != "INVALID_ARGUMENT" or "width" not in fields]
    return _verdict(problems, f"{d['min_side']}..{d['max_side']} px squares generate; beyond them, refused "
                              "naming width")


def _t5(d: dict[str, Any]) -> Verdict:
    if d["differ"]:
        return Verdict(VERIFIED, "a third encoder reads past CLIP's 77 tokens")
    if d["t5_reported"] == "dropped":
        return Verdict(UNDECIDED, "this deployment runs without T5 (identical images, as expected without it)")
    return Verdict(CONTRADICTED, "nothing reads past CLIP's 77 tokens, though the service reports T5")


def _lora(d: dict[str, Any]) -> Verdict:
    problems = ["the adapter left the output unchanged"] if not d["changed"] else []
    problems += ["without the adapter the base output did not return"] if not d["restored"] else []
    return _verdict(problems, "the adapter changes the output; without it the base output returns")


def _vs_large(d: dict[str, Any]) -> Verdict:
    problems = [f"Turbo ran {d['turbo_steps']} steps, Large {d['large_steps']}"] \
        if d["turbo_steps"] >= d["large_steps"] else []
    problems += [f"only {d['speedup']:.2f}x faster than Large (at least {TURBO_MIN_SPEEDUP:g}x expected)"] \
        if d["speedup"] < TURBO_MIN_SPEEDUP else []
    return _verdict(problems, f"{d['turbo_steps']} vs {d['large_steps']} steps, {d['speedup']:.1f}x faster")


def _adherence(d: dict[str, Any]) -> Verdict:
    low, high = wilson(d["top5_hits"], d["images"])
    held = f"top-5 hit {d['top5_hits']}/{d['images']}, Wilson 95% [{low:.2f}, {high:.2f}]"
    return Verdict(VERIFIED if low >= ADHERENCE_BAR else CONTRADICTED,
                   f"{held} {'clears' if low >= ADHERENCE_BAR else 'does not clear'} the bar {ADHERENCE_BAR:g}")


# -- numeric claims a measurement decides -----------------------------------------------------------------
Decider = Callable[[float, ProbeResult, bool], Verdict]  # (claimed value, result, weights may decide)
#: Claim metrics whose decider judges the weights itself (int8: the speed half holds on any weights).
WEIGHTS_AWARE = frozenset({"int8_speedup"})


def at_least(name: str) -> Decider:
    def decide(claimed: float, r: ProbeResult, _weights_ok: bool) -> Verdict:
        value = next(m.value for m in r.measurements if m.name == name)
        met = value >= claimed * (1 - LIVE_TOLERANCE)
        return Verdict(VERIFIED if met else CONTRADICTED, f"measured {value:.4g}, {'meets' if met else 'below'} "
                                                          f"{claimed:g} within {LIVE_TOLERANCE:.0%}")
    return decide


def equal_to(name: str) -> Decider:
    def decide(claimed: float, r: ProbeResult, _weights_ok: bool) -> Verdict:
        value = next(m.value for m in r.measurements if m.name == name)
        return Verdict(VERIFIED if value == claimed else CONTRADICTED, f"measured {value:g}, claimed {claimed:g}")
    return decide


def _int8(claimed: float, r: ProbeResult, weights_ok: bool) -> Verdict:
    """Both halves: the speed-up (any weights) and top-1 agreement (only weights that may decide)."""
    speed, agree = r.data["speedup"], r.data["agreement"]
    if speed < claimed * (1 - LIVE_TOLERANCE):
        return Verdict(CONTRADICTED, f"{speed:.2f}x, below {claimed:g}x")
    if not weights_ok:
        return Verdict(UNDECIDED, f"the speed-up {speed:.2f}x meets {claimed:g}x, but top-1 agreement on these "
                                  f"weights ({agree:.1%}) says nothing about accuracy loss")
    ok = agree >= AGREEMENT_BAR
    return Verdict(VERIFIED if ok else CONTRADICTED, f"{speed:.2f}x and top-1 agreement {agree:.1%} over "
                                                     f"{r.data['images']} images (bar {AGREEMENT_BAR:.0%})")


# -- the table ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    id: str
    capabilities: tuple[str, ...]
    claim: str  # what the check itself tests (the live row's claim)
    conditions: str  # what its measurement holds under
    observes: str
    fails: str
    judge: Callable[[dict[str, Any]], Verdict]
    weights_dependent: bool = False  # only real or operator-attested weights decide it
    decides: dict[str, Decider] = field(default_factory=dict)  # catalog claim metric → decider


CHECKS: tuple[Check, ...] = (
    Check("vit.distribution", ("imagenet-1k-classification",),
          "returns a probability distribution over all its labels whose top-1 is the logits' argmax",
          "any weights; 1 image, 224 px", "Classify 1 image, top_k = all labels, with logits",
          "wrong label count, scores not summing to 1, top-1 not the argmax, unsorted scores", _distribution),
    Check("vit.embedding", ("embedding-extraction",),
          "embeddings of one measured width from every layer, normalised, identical on repeat",
          "any weights; 1 image", "Embed layers 0..N, then the final normalised vector twice",
          "missing layers, truncated vectors, width unlike the reply/GetModelInfo, jitter, wrong norm", _embedding),
    Check("vit.batching", ("batch-inference",),
          "a batch gets the single-image answers in order (throughput measured against batch 1)",
          "any weights; the deployment's device and precision; batch 10 vs 1, 224 px",
          "10 images one by one, then as one batch (x2, median)", "a batch answer that is not its image's", _batching,
          decides={"batch10_throughput_ratio": at_least("batch10_throughput_ratio")}),
    Check("vit.transfer", ("fine-tuning",),
          "a linear head trained on its embeddings classifies held-out examples (transfer learning)",
          "any weights; 8 training and 4 held-out solid-colour images", "CreateHead, Classify with the head, "
          "DeleteHead", "a held-out example misclassified (e.g. predictions that ignore the head)", _transfer),
    Check("vit.precision", ("quantization-onnx-export",),
          "runs at the precision asked for (speed-up and top-1 agreement measured against fp32)",
          "speed: any weights, the deployments' device; agreement: real or operator-attested weights",
          "GetModelInfo of the other deployment; 32 images through both; 5 alternated timed calls of 8 each",
          "a reported precision other than the one configured", _precision, decides={"int8_speedup": _int8}),
    Check("sd35.generate", ("text-to-image", "seeded-determinism", "four-step-generation"),
          "an image of the requested size, byte-identical for the same request and seed",
          "any weights; the variant's default size and steps", "Generate twice, same prompt and seed; decode the PNG",
          "another size, undecodable bytes, different bytes on repeat", _generate,
          decides={"default_steps": equal_to("default_steps")}),
    Check("sd35.guidance", ("classifier-free-guidance",), "guidance scale and negative prompts change the output",
          "any weights; same seed", "Generate with guidance 0, 4.5, then 4.5 with a negative prompt",
          "identical images", _guidance),
    Check("sd35.resolution", ("megapixel-output", "multi-resolution"),
          "the advertised pixel limits hold at both edges", "any weights; 1 step",
          "the smallest and largest advertised squares; one step beyond each and a side not a multiple of 16",
          "an advertised size refused or resized, or an out-of-range one accepted", _resolution),
    Check("sd35.t5", ("three-text-encoders",),
          "a third text encoder reads past CLIP's 77 tokens", "any weights; a deployment serving T5",
          "two prompts identical in their first 77 CLIP tokens, different after, same seed",
          "identical images while the service reports T5", _t5),
    Check("sd35.lora", ("lora-fine-tuning",), "a LoRA adapter changes the output; without it the base output returns",
          "any weights; an adapter loaded or GATEWAY_LORA_PROBE_PATH", "Generate without, with, without the adapter",
          "no change, or the base not restored", _lora),
    Check("sd35.vs-large", ("four-step-generation",),
          "Turbo runs fewer steps than Large and is clearly faster at the same size and seed",
          "any weights; both on this deployment, same prompt, seed and size",
          "3 alternated Large/Turbo generations at their default steps: steps and median times",
          f"as many steps as Large, or a wall-clock speed-up below {TURBO_MIN_SPEEDUP:g}x", _vs_large),
    Check("quality", ("prompt-adherence",),
          "prompt adherence: the ViT judge finds the prompted ImageNet class in the images",
          "real or operator-attested weights of generator and judge",
          "'a photo of a {class}' generated per class and seed, classified by the ViT service",
          f"Wilson 95% lower bound of the top-5 hit rate below {ADHERENCE_BAR:g}", _adherence,
          weights_dependent=True),
)
BY_ID = {c.id: c for c in CHECKS}
FOR_CAPABILITY: dict[str, list[Check]] = {}
for _check in CHECKS:
    for _cap in _check.capabilities:
        FOR_CAPABILITY.setdefault(_cap, []).append(_check)
#: Capabilities only the service's description speaks to: CLAIMED "reported by the service" unless sourced.
SELF_DESCRIBED = ("multi-framework-safetensors", "diffusers-integration", "open-self-hosted-inference",
                  "skip-layer-guidance")


def check_of(key: str) -> Check:
    """The check behind a result key ("vit.precision.int8" → vit.precision)."""
    return BY_ID.get(key) or BY_ID[key.rsplit(".", 1)[0]]


# -- the stage ---------------------------------------------------------------------------------------------
async def run_checks(run: Run) -> None:
    jobs: list[Awaitable[None]] = []
    compared = [run.served[m] for m in run.opts.model_ids if m in run.served and run.served[m].info_error is None]
    for served in compared:
        jobs.append(_sd35_checks(run, served) if served.by.t2i else _vit_checks(run, served))
    if jobs:
        run.progress("probe", f"probing {len(compared)} served model(s)", 0.15)
        await asyncio.gather(*jobs)


def _wanted(run: Run, model_id: str, check: str) -> bool:
    """A check runs only when a capability of the model needs it (all of them without a catalog)."""
    entry = run.catalog.get(model_id)
    return entry is None or any(check in BY_ID and c.id in BY_ID[check].capabilities for c in entry.capabilities)


async def _vit_checks(run: Run, served: Served) -> None:
    assert run.vit is not None
    vp = VitProbes(run.ds, run.vit, run.probe_budget)
    w = served.weights
    for name, fn in (("vit.distribution", vp.distribution), ("vit.embedding", vp.embedding),
                     ("vit.batching", vp.batching), ("vit.transfer", vp.transfer)):
        if _wanted(run, served.model_id, name):
            result = await run.probe("vit", w, name, fn)
            if result is not None:
                served.probes[name] = result
                run.progress("probe", f"{name}: observed", 0.3)
    if not _wanted(run, served.model_id, "vit.precision"):
        return
    targets = run.cfg.precision_targets()
    base = "vit" if w.precision == "fp32" else "vit-fp32" if "fp32" in targets else ""
    others = {p: t for p, t in targets.items() if p != "fp32"}
    if not base or not others:
        why = (f"this deployment serves {w.precision} only: no other precision is configured to compare with"
               if not others else f"this deployment serves {w.precision}: no fp32 deployment to time against")
        served.probes["vit.precision"] = unavailable("vit.precision", f"{why} (GATEWAY_VIT_PRECISIONS)", w)
        return
    for precision, target in others.items():
        name = f"vit.precision.{precision}"
        result = await run.probe("vit", w, f"{name}@{target}",
                                 lambda p=precision: vp.precision(f"vit-{p}", p, base), kind=name)
        if result is not None:
            served.probes[name] = result


def sd35_probes(run: Run, variant: str) -> Sd35Probes:
    return Sd35Probes(run.ds, run.variants[variant], run.probe_budget, run.cfg.probe_size, run.cfg.probe_steps)


async def _sd35_checks(run: Run, served: Served) -> None:
    variant = served.by.variant
    sp = sd35_probes(run, variant)
    for short, fn in (("generate", sp.size_and_determinism), ("guidance", sp.guidance),
                      ("resolution", sp.resolution_edges), ("t5", sp.t5),
                      ("lora", lambda: sp.lora(run.cfg.lora_probe_path))):
        if _wanted(run, served.model_id, f"sd35.{short}"):
            result = await run.probe(str(served.by), served.weights, f"sd35.{variant}.{short}", fn)
            if result is not None:
                served.probes[f"sd35.{short}"] = result
                run.progress("probe", f"sd35 {variant} {short}: observed", 0.45)
    turbo = served.probes.get("sd35.generate")
    if variant == "large-turbo" and _wanted(run, served.model_id, "sd35.vs-large") and turbo is not None:
        served.probes["sd35.vs-large"] = await _vs_large_result(run, turbo, served.weights)


async def _vs_large_result(run: Run, turbo: ProbeResult, w: gateway_pb2.ServedWeights) -> ProbeResult:
    """Large and Turbo at their default steps, same prompt, seed and size, alternated 3 times: medians."""
    name = "sd35.large-turbo.vs-large"
    if "large" not in run.variants:
        return unavailable(name, "the sd35 service does not host Large to compare with", w)
    large, fast = sd35_probes(run, "large"), sd35_probes(run, "large-turbo")

    async def measure() -> ProbeResult:
        times: dict[str, list[float]] = {"large": [], "turbo": []}
        steps = {}
        for _ in range(VS_LARGE_PAIRS):  # alternated, so load drifts hit both alike
            for key, probes in (("large", large), ("turbo", fast)):
                g = await probes.generate("a photo of a lighthouse at dusk", 7)
                times[key].append(g.total_ms)
                steps[key] = g.steps
        ms = {k: statistics.median(v) for k, v in times.items()}
        at = now_iso()
        data = {"turbo_steps": steps["turbo"], "large_steps": steps["large"], "speedup": ms["large"] / ms["turbo"]}
        detail = (f"same prompt, seed and size, {VS_LARGE_PAIRS} alternated pairs: Large {steps['large']} steps in "
                  f"{ms['large']:.0f} ms, Turbo {steps['turbo']} steps in {ms['turbo']:.0f} ms (medians)")
        return ProbeResult(name, detail, [measurement("turbo_vs_large_speedup", data["speedup"], "x", name,
                                                      f"median Large time ÷ median Turbo time, {VS_LARGE_PAIRS} "
                                                      "alternated pairs at their default steps", w, at)], data, w, at)

    if not turbo.observed:
        return turbo
    return await run.probe(str(ServedBy("sd35", "large-turbo")), w, name, measure) or unavailable(name, "not run", w)
