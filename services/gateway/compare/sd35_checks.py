"""The SD3.5 service's checks: their judgements, their plans, and their rows of the table."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from services.gateway.compare.check import Check, Job
from services.gateway.compare.probes import ProbeResult, measurement, now_iso, unavailable
from services.gateway.compare.sd35_probes import Sd35Probes
from services.gateway.compare.verdicts import CONTRADICTED as _CONTRADICTED
from services.gateway.compare.verdicts import UNDECIDED, Verdict, equal_to, verdict
from services.gateway.compare.verdicts import VERIFIED as _VERIFIED

if TYPE_CHECKING:
    from services.gateway.compare.run import Run, Served

#: Turbo against Large, same size and seed: Turbo runs 1/7 of Large's steps without CFG (1/14 of the
#: transformer passes); text encoding and the VAE decode are fixed costs, so the wall-clock speed-up is
#: below the step ratio, but a Turbo less than this much faster shows no benefit of its distillation.
TURBO_MIN_SPEEDUP = 2.0
#: Alternated Large/Turbo generations whose medians give the speed-up.
VS_LARGE_PAIRS = 3


def sd35_probes(run: Run, variant: str) -> Sd35Probes:
    return Sd35Probes(run.ds, run.variants[variant], run.probe_budget, run.cfg.probe_size, run.cfg.probe_steps)


# -- judgements: what was observed → a verdict ------------------------------------------------------------
def _generate(d: dict[str, Any]) -> Verdict:
    problems = [f"asked for {d['requested']}, decoded {d['decoded']} (the reply says {d['reported']})"] \
        if not d["requested"] == d["decoded"] == d["reported"] else []
    problems += ["the same request and seed gave different bytes"] if not d["deterministic"] else []
    return verdict(problems, "the requested size, byte-identical for the same request and seed")


def _guidance(d: dict[str, Any]) -> Verdict:
    problems = ["guidance 0 and 4.5 gave identical images"] if not d["guidance_changes"] else []
    problems += ["a negative prompt left the image unchanged"] if not d["negative_changes"] else []
    return verdict(problems, "guidance scale and negative prompts change the output")


def _resolution(d: dict[str, Any]) -> Verdict:
    problems = [f"{s}x{s} (inside the advertised limits) → {got}" for s, got in d["accepted"].items()
                if got != f"{s}x{s}"]
    problems += [f"{s}x{s} (outside them) → {got} {fields or ''}".strip() for s, (got, fields) in d["refused"].items()
                 if got != "INVALID_ARGUMENT" or "width" not in fields]
    return verdict(problems, f"{d['min_side']}..{d['max_side']} px squares generate; beyond them, refused "
                             "naming width")


def _t5(d: dict[str, Any]) -> Verdict:
    if d["differ"]:
        return Verdict(_VERIFIED, "a third encoder reads past CLIP's 77 tokens")
    if d["t5_reported"] == "dropped":
        return Verdict(UNDECIDED, "this deployment runs without T5 (identical images, as expected without it)")
    return Verdict(_CONTRADICTED, "nothing reads past CLIP's 77 tokens, though the service reports T5")


def _lora(d: dict[str, Any]) -> Verdict:
    problems = ["the adapter left the output unchanged"] if not d["changed"] else []
    problems += ["without the adapter the base output did not return"] if not d["restored"] else []
    return verdict(problems, "the adapter changes the output; without it the base output returns")


def _vs_large(d: dict[str, Any]) -> Verdict:
    problems = [f"Turbo ran {d['turbo_steps']} steps, Large {d['large_steps']}"] \
        if d["turbo_steps"] >= d["large_steps"] else []
    problems += [f"only {d['speedup']:.2f}x faster than Large (at least {TURBO_MIN_SPEEDUP:g}x expected)"] \
        if d["speedup"] < TURBO_MIN_SPEEDUP else []
    return verdict(problems, f"{d['turbo_steps']} vs {d['large_steps']} steps, {d['speedup']:.1f}x faster")


# -- plans -----------------------------------------------------------------------------------------------------
def _one(probe: Callable[[Sd35Probes, Run], Callable[[], Awaitable[ProbeResult]]]
         ) -> Callable[[Run, Served], list[Job]]:
    def plan(run: Run, served: Served) -> list[Job]:
        return [Job(run=probe(sd35_probes(run, served.by.variant), run))]
    return plan


def _vs_large_jobs(run: Run, served: Served) -> list[Job]:
    """Large and Turbo at their default steps, same prompt, seed and size, alternated 3 times: medians."""
    turbo, w = served.result_of(GENERATE), served.weights
    name = "sd35.large-turbo.vs-large"
    if turbo is None:
        return []
    if "large" not in run.variants:
        return [Job(result=unavailable(name, "the sd35 service does not host Large to compare with", w))]
    if not turbo.observed:
        return [Job(result=turbo)]
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

    return [Job(run=measure)]


# -- the table's SD3.5 rows -----------------------------------------------------------------------------------
GENERATE = Check(
    "sd35.generate", "sd35", ("text-to-image", "seeded-determinism", "four-step-generation"),
    "an image of the requested size, byte-identical for the same request and seed",
    "any weights; the variant's default size and steps", "Generate twice, same prompt and seed; decode the PNG",
    "another size, undecodable bytes, different bytes on repeat",
    "that the pixels depend on the prompt (bytes are compared, not pixels)", _generate,
    _one(lambda sp, _run: sp.size_and_determinism), decides={"default_steps": equal_to("default_steps")})
GUIDANCE = Check(
    "sd35.guidance", "sd35", ("classifier-free-guidance",), "guidance scale and negative prompts change the output",
    "any weights; same seed", "Generate with guidance 0, 4.5, then 4.5 with a negative prompt", "identical images",
    "that the change is in the pixels (bytes are compared)", _guidance, _one(lambda sp, _run: sp.guidance))
RESOLUTION = Check(
    "sd35.resolution", "sd35", ("megapixel-output", "multi-resolution"),
    "the advertised pixel limits hold at both edges", "any weights; 1 step",
    "the smallest and largest advertised squares; one step beyond each and a side not a multiple of 16",
    "an advertised size refused or resized, or an out-of-range one accepted",
    "the catalog's claimed sizes (it tests the service's own limits)", _resolution,
    _one(lambda sp, _run: sp.resolution_edges))
T5 = Check(
    "sd35.t5", "sd35", ("three-text-encoders",), "a third text encoder reads past CLIP's 77 tokens",
    "any weights; a deployment serving T5", "two prompts identical in their first 77 CLIP tokens, different after, "
    "same seed", "identical images while the service reports T5",
    "that the encoder is T5 (any reader past 77 tokens passes)", _t5, _one(lambda sp, _run: sp.t5))
LORA = Check(
    "sd35.lora", "sd35", ("lora-fine-tuning",), "a LoRA adapter changes the output; without it the base output returns",
    "any weights; an adapter loaded or GATEWAY_LORA_PROBE_PATH", "Generate without, with, without the adapter",
    "no change, or the base not restored", "that the adapter is a LoRA (any change passes)", _lora,
    _one(lambda sp, run: lambda: sp.lora(run.cfg.lora_probe_path)))
VS_LARGE = Check(
    "sd35.vs-large", "sd35", ("four-step-generation",),
    "Turbo runs fewer steps than Large and is clearly faster at the same size and seed",
    "any weights; both on this deployment, same prompt, seed and size",
    "3 alternated Large/Turbo generations at their default steps: steps and median times",
    f"as many steps as Large, or a wall-clock speed-up below {TURBO_MIN_SPEEDUP:g}x",
    "the step counts themselves (they are read from the replies)", _vs_large, _vs_large_jobs,
    applies=lambda served: served.by.variant == "large-turbo")
SD35_CHECKS = (GENERATE, GUIDANCE, RESOLUTION, T5, LORA, VS_LARGE)
