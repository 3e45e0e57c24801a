"""The SD3.5 service's checks: their judgements, their plans, and their rows of the table.

Every image is compared by its decoded pixels (:mod:`.sd35_probes`); the figures a check expects (sizes,
default steps) are the catalog's (:mod:`.sd35_expected`); without one the row is UNDECIDED."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from services.gateway.compare.check import Check, Job
from services.gateway.compare.probes import ProbeResult, measurement, now_iso, unavailable
from services.gateway.compare.sd35_expected import Expected
from services.gateway.compare.sd35_probes import Sd35Probes
from services.gateway.compare.verdicts import CONTRADICTED as _CONTRADICTED
from services.gateway.compare.verdicts import NO_FIGURE, UNDECIDED, Verdict, equal_to, verdict
from services.gateway.compare.verdicts import VERIFIED as _VERIFIED
from services.gateway.config import ServedBy

if TYPE_CHECKING:
    from services.gateway.compare.run import Run, Served

#: Turbo against Large, same size and seed: Turbo runs 1/7 of Large's steps without CFG (1/14 of the
#: transformer passes); text encoding and the VAE decode are fixed costs, so the wall-clock speed-up is
#: below the step ratio, but a Turbo less than this much faster shows no benefit of its distillation.
TURBO_MIN_SPEEDUP = 2.0
#: Alternated Large/Turbo generations whose medians give the speed-up.
VS_LARGE_PAIRS = 3


def sd35_probes(run: Run, variant: str) -> Sd35Probes:
    """Probes of a variant the sd35 service hosts, expecting the figures of the catalog entry it serves."""
    by = ServedBy("sd35", variant)
    model_id = next((m for m, b in run.gw.served.items() if b == by), "")
    return Sd35Probes(run.ds, run.variants[variant], run.probe_budget, Expected.of(run.catalog.get(model_id)),
                      run.cfg.probe_size, run.cfg.probe_steps)


# -- judgements: what was observed → a verdict ------------------------------------------------------------
def _generate(d: dict[str, Any]) -> Verdict:
    problems = [f"asked for {d['requested']}, decoded {d['decoded']} (the reply says {d['reported']})"] \
        if not d["requested"] == d["decoded"] == d["reported"] else []
    problems += [f"a flat image (pixel spread {d['spread']:.2f} levels, below {d['flat_below']:g})"] \
        if d["spread"] < d["flat_below"] else []
    problems += ["two prompts, same seed, gave identical pixels"] if not d["prompt_changes"] else []
    return verdict(problems, "a picture of the requested size whose pixels change with the prompt")


def _determinism(d: dict[str, Any]) -> Verdict:
    problems = ["the same request and seed gave different pixels"] if not d["deterministic"] else []
    problems += [f"another seed moved the pixels by {d['seed_diff']:.2f} levels (more than {d['seed_min_diff']:g} "
                 "expected)"] if d["seed_diff"] <= d["seed_min_diff"] else []
    return verdict(problems, "identical pixels for the same request and seed; another seed, another image")


def _steps(d: dict[str, Any]) -> Verdict:
    n = d["expected"]
    if n is None:
        return Verdict(UNDECIDED, f"{NO_FIGURE} (the catalog states no default step count)")
    if d["observed"] is None:
        same = [k for k, v in d["equal"].items() if v]
        return Verdict(_CONTRADICTED, f"the default's pixels equal those of steps={', '.join(same)}, not only "
                                      f"steps={n}" if same else f"the default's pixels equal none of steps={n - 1}, "
                                      f"{n}, {n + 1}: it does not run the catalog's {n}")
    return Verdict(_VERIFIED, f"runs {n} steps by default (the catalog's figure), observed in the pixels")


def _guidance(d: dict[str, Any]) -> Verdict:
    problems = ["guidance 0 and 4.5 gave identical pixels"] if not d["guidance_changes"] else []
    problems += ["a negative prompt left the pixels unchanged"] if not d["negative_changes"] else []
    return verdict(problems, "guidance scale and negative prompts change the output")


def _resolution(d: dict[str, Any]) -> Verdict:
    problems = [f"{s}x{s} (claimed by the catalog) → {got}" for s, got in d["claimed"].items() if got != f"{s}x{s}"]
    problems += [f"{s}x{s} (inside the advertised limits) → {got}" for s, got in d["accepted"].items()
                 if got != f"{s}x{s}"]
    problems += [f"{s}x{s} (outside them) → {got} {fields or ''}".strip() for s, (got, fields) in d["refused"].items()
                 if got != "INVALID_ARGUMENT" or "width" not in fields]
    if not problems and not d["claimed"]:
        return Verdict(UNDECIDED, f"{NO_FIGURE} (the catalog claims no output size)")
    sizes = ", ".join(f"{s}x{s}" for s in d["claimed"])
    return verdict(problems, f"the claimed {sizes} generates at that size; beyond the limits, refused naming width")


def _t5(d: dict[str, Any]) -> Verdict:
    """The service's own text_encoder_3 never excuses identical pixels: the claim is the catalog's."""
    if d["differ"]:
        return Verdict(_VERIFIED, "a third encoder reads past CLIP's 77 tokens")
    return Verdict(_CONTRADICTED, "nothing reads past CLIP's 77 tokens (the service reports text_encoder_3="
                                  f"{d['t5_reported'] or 'nothing'})")


def _lora(d: dict[str, Any]) -> Verdict:
    problems = ["the adapter left the output unchanged"] if not d["changed"] else []
    problems += ["without the adapter the base output did not return"] if not d["restored"] else []
    return verdict(problems, "the adapter changes the output; without it the base output returns")


def _vs_large(d: dict[str, Any]) -> Verdict:
    """Steps as observed by the same pixel probe on both (never the replies' ``steps``)."""
    turbo, large = d["turbo_steps"], d["large_steps"]
    problems = [f"Turbo runs {turbo} steps by default, Large {large}"] \
        if None not in (turbo, large) and turbo >= large else []
    problems += [f"only {d['speedup']:.2f}x faster than Large (at least {TURBO_MIN_SPEEDUP:g}x expected)"] \
        if d["speedup"] < TURBO_MIN_SPEEDUP else []
    if not problems and None in (turbo, large):
        return Verdict(UNDECIDED, f"{d['speedup']:.1f}x faster, but the default steps of both were not observed "
                                  "(the catalog states no figure, or a default did not match it)")
    return verdict(problems, f"{turbo} vs {large} steps by default (observed), {d['speedup']:.1f}x faster")


# -- plans -----------------------------------------------------------------------------------------------------
def _one(probe: Callable[[Sd35Probes, Run], Callable[[], Awaitable[ProbeResult]]]
         ) -> Callable[[Run, Served], list[Job]]:
    def plan(run: Run, served: Served) -> list[Job]:
        return [Job(run=probe(sd35_probes(run, served.by.variant), run))]
    return plan


async def _observed_steps(run: Run, variant: str) -> int | None:
    """The default step count the steps probe observed for ``variant`` (the same cached observation as its
    own steps row), or None: no catalog figure, a default unlike it, or no observation."""
    from services.gateway.compare import cached

    r = await cached.probe(run, str(ServedBy("sd35", variant)), run.variants[variant].weights,
                           STEPS.id, sd35_probes(run, variant).default_steps)
    return r.data.get("observed") if r is not None and r.observed else None


def _vs_large_jobs(run: Run, served: Served) -> list[Job]:
    """Large and Turbo at their default steps, same prompt, seed and size, alternated 3 times: medians; the
    steps of both as the steps probe observes them."""
    turbo, w = served.result_of(GENERATE), served.weights
    name = "sd35.large-turbo.vs-large"
    if turbo is None:
        return []
    if "large" not in run.variants:
        return [Job(result=unavailable(name, "no Large served here to compare with (no sd35 target hosts it, or its "
                                              "GetModelInfo failed)", w))]
    if not turbo.observed:
        return [Job(result=turbo)]
    large, fast = sd35_probes(run, "large"), sd35_probes(run, "large-turbo")

    async def measure() -> ProbeResult:
        times: dict[str, list[float]] = {"large": [], "turbo": []}
        for _ in range(VS_LARGE_PAIRS):  # alternated, so load drifts hit both alike
            for key, probes in (("large", large), ("turbo", fast)):
                g = await probes.generate("a photo of a lighthouse at dusk", 7, steps=-1)
                times[key].append(g.total_ms)
        ms = {k: statistics.median(v) for k, v in times.items()}
        at = now_iso()
        seen = {"turbo": await _observed_steps(run, "large-turbo"), "large": await _observed_steps(run, "large")}
        data = {"turbo_steps": seen["turbo"], "large_steps": seen["large"], "speedup": ms["large"] / ms["turbo"]}
        shown = {k: f"{v} steps (observed)" if v else "steps not observed" for k, v in seen.items()}
        detail = (f"same prompt, seed and size, {VS_LARGE_PAIRS} alternated pairs at their default steps: Large "
                  f"{shown['large']} in {ms['large']:.0f} ms, Turbo {shown['turbo']} in {ms['turbo']:.0f} ms (medians)")
        return ProbeResult(name, detail, [measurement("turbo_vs_large_speedup", data["speedup"], "x", name,
                                                      f"median Large time ÷ median Turbo time, {VS_LARGE_PAIRS} "
                                                      "alternated pairs at their default steps", w, at)], data, w, at)

    return [Job(run=measure)]


# -- the table's SD3.5 rows -----------------------------------------------------------------------------------
GENERATE = Check(
    "sd35.generate", "sd35", ("text-to-image",),
    "a picture of the requested size whose pixels change with the prompt",
    "any weights; the catalog's size (or GATEWAY_PROBE_SIZE), the variant's default steps",
    "Generate two prompts, same seed; decode both and compare pixels",
    "another size, undecodable bytes, a flat image, identical pixels for two prompts",
    "that the picture shows the prompt (a generator hashing the prompt into noise passes)", _generate,
    _one(lambda sp, _run: sp.size_and_determinism))
DETERMINISM = Check(
    "sd35.determinism", "sd35", ("seeded-determinism",),
    "identical pixels for the same request and seed; another seed gives another image",
    "any weights; the catalog's size", "Generate the same request twice, then with another seed; decode",
    "different pixels on repeat, or another seed moving the pixels by less than the threshold",
    "determinism across hardware or library versions (one deployment, one run)", _determinism,
    _one(lambda sp, _run: sp.determinism))
STEPS = Check(
    "sd35.steps", "sd35", ("four-step-generation",),
    "runs the catalog's default step count when a request leaves steps unset",
    "any weights; same prompt, size and seed", "Generate with steps unset, then steps N-1, N, N+1 (N: the "
    "catalog's figure); compare pixels", "the default's pixels unlike steps=N's, or like N-1's or N+1's",
    "the step count without a catalog figure (UNDECIDED), or a schedule that repeats N's exact pixels", _steps,
    _one(lambda sp, _run: sp.default_steps), decides={"default_steps": equal_to("default_steps")})
GUIDANCE = Check(
    "sd35.guidance", "sd35", ("classifier-free-guidance",), "guidance scale and negative prompts change the output",
    "any weights; same seed", "Generate with guidance 0, 4.5, then 4.5 with a negative prompt; compare pixels",
    "identical pixels", "that the change is classifier-free guidance (any change passes)", _guidance,
    _one(lambda sp, _run: sp.guidance))
RESOLUTION = Check(
    "sd35.resolution", "sd35", ("megapixel-output", "multi-resolution"),
    "generates the sizes the catalog claims, at that size", "any weights; 1 step",
    "each square size the catalog claims, then the smallest advertised square; one step beyond the largest and "
    "a side not a multiple of 16", "a claimed size refused or resized, or an out-of-range one accepted",
    "the quality of the picture at that size, or aspect ratios the catalog does not state", _resolution,
    _one(lambda sp, _run: sp.resolution), decides={"image_side_px": equal_to("image_side_px")})
T5 = Check(
    "sd35.t5", "sd35", ("three-text-encoders",), "a third text encoder reads past CLIP's 77 tokens", "any weights",
    "two prompts identical in their first 77 CLIP tokens, different after, same seed; compare pixels",
    "identical pixels, whatever the service reports of T5",
    "that the third encoder is T5-XXL (any reader past 77 tokens passes)", _t5, _one(lambda sp, _run: sp.t5))
LORA = Check(
    "sd35.lora", "sd35", ("lora-fine-tuning",), "a LoRA adapter changes the output; without it the base output returns",
    "any weights; an adapter loaded or GATEWAY_LORA_PROBE_PATH",
    "Generate without, with, without the adapter; compare pixels", "no change, or the base not restored",
    "that the adapter is a LoRA, or that it was trained (any change passes)", _lora,
    _one(lambda sp, run: lambda: sp.lora(run.cfg.lora_probe_path)))
VS_LARGE = Check(
    "sd35.vs-large", "sd35", ("four-step-generation",),
    "Turbo runs fewer steps than Large and is clearly faster at the same size and seed",
    "any weights; both on this deployment, same prompt, seed and size",
    "the default steps of both as the steps check observes them; 3 alternated Large/Turbo generations at "
    "their defaults: median times",
    f"as many steps as Large, or a wall-clock speed-up below {TURBO_MIN_SPEEDUP:g}x",
    "the steps without catalog figures for both (UNDECIDED)", _vs_large, _vs_large_jobs,
    applies=lambda served: served.by.variant == "large-turbo")
SD35_CHECKS = (GENERATE, DETERMINISM, STEPS, GUIDANCE, RESOLUTION, T5, LORA, VS_LARGE)
