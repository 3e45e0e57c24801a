"""The live checks, declared in one table (:data:`CHECKS`), and the stage of a comparison that runs them.

Each :class:`~services.gateway.compare.check.Check` states the claim it tests, the conditions its
measurement holds under, what it observes, the lies it catches and what it does not prove, its probe and
its judgement — VERIFIED_LIVE or CONTRADICTED (a probe that could not run is UNAVAILABLE; a reply out of
contract is CONTRADICTED before any judgement). A judgement may also decline: ``Verdict(UNDECIDED, why)``
when the observation cannot speak to the claim under this deployment's conditions. Nothing a service says
about itself (GetModelInfo) is judged here: those capabilities stay CLAIMED, "reported by the service",
unless a source supports them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.common.stats import wilson
from services.gateway.compare import cached
from services.gateway.compare.check import Check
from services.gateway.compare.run import Run, Served
from services.gateway.compare.sd35_checks import SD35_CHECKS
from services.gateway.compare.verdicts import CONTRADICTED, VERIFIED, Verdict
from services.gateway.compare.vit_checks import VIT_CHECKS

#: Prompt adherence: the Wilson 95% lower bound of the top-5 hit rate must clear this.
ADHERENCE_BAR = 0.5


def _adherence(d: dict[str, Any]) -> Verdict:
    low, high = wilson(d["top5_hits"], d["images"])
    held = f"top-5 hit {d['top5_hits']}/{d['images']}, Wilson 95% [{low:.2f}, {high:.2f}]"
    return Verdict(VERIFIED if low >= ADHERENCE_BAR else CONTRADICTED,
                   f"{held} {'clears' if low >= ADHERENCE_BAR else 'does not clear'} the bar {ADHERENCE_BAR:g}")


#: Observed by the quality stage (:mod:`services.gateway.compare.quality`), not by the runner.
QUALITY = Check(
    "quality", "sd35", ("prompt-adherence",),
    "prompt adherence: the ViT judge finds the prompted ImageNet class in the images",
    "real or operator-attested weights of generator and judge",
    "'a photo of a {class}' generated per class and seed, classified by the ViT service",
    f"Wilson 95% lower bound of the top-5 hit rate below {ADHERENCE_BAR:g}",
    "that the judge is right (its label names are the catalog checkpoint's, by digest; its weights decide only "
    "when real or attested)", _adherence,
    weights_dependent=True)

CHECKS: tuple[Check, ...] = (*VIT_CHECKS, *SD35_CHECKS, QUALITY)
BY_ID = {c.id: c for c in CHECKS}
FOR_CAPABILITY: dict[str, list[Check]] = {}
for _check in CHECKS:
    for _cap in _check.rows:
        FOR_CAPABILITY.setdefault(_cap, []).append(_check)
#: Checks with a row of their own (not a catalog capability): the architecture.
OWN_ROWS = tuple(c for c in CHECKS if not c.capabilities)
#: Capabilities only the service's description speaks to: CLAIMED "reported by the service" unless sourced.
SELF_DESCRIBED = ("multi-framework-safetensors", "diffusers-integration", "open-self-hosted-inference",
                  "skip-layer-guidance")


# -- the stage ---------------------------------------------------------------------------------------------
async def run_checks(run: Run) -> None:
    compared = [run.served[m] for m in run.opts.model_ids if m in run.served and run.served[m].info_error is None]
    if compared:
        run.progress("probe", f"probing {len(compared)} served model(s)", 0.15)
        await asyncio.gather(*(_check_model(run, served) for served in compared))


def _wanted(run: Run, served: Served, check: Check) -> bool:
    """A check runs when it probes this model's service and a capability of the model, or a catalog claim whose
    metric it decides, needs it (all of them without a catalog entry)."""
    entry = run.catalog.get(served.model_id)
    needed = (entry is None or not check.capabilities or any(c.id in check.capabilities for c in entry.capabilities)
              or any(cl.metric in check.decides for cl in entry.claims))
    return check.plan is not None and served.by.service == check.service and check.applies(served) and needed


async def _check_model(run: Run, served: Served) -> None:
    """The model's checks one after another (they share its service), in the table's order."""
    for check in CHECKS:
        if not _wanted(run, served, check):
            continue
        assert check.plan is not None
        for job in check.plan(run, served):
            result = job.result
            if result is None and job.run is not None:
                result = await cached.probe(run, str(served.by), served.weights, job.key or check.id, job.run,
                                            kind=check.id)
            if result is not None:
                served.results.append((check, result))
                run.progress("probe", f"{check.id} on {served.model_id}: observed", 0.3)


def table_markdown() -> str:
    """The check table as docs/GATEWAY.md shows it (a test keeps the two the same)."""
    lines = ["| check (rows) | claim it tests | conditions its measurement holds under | what it observes | "
             "lies it catches | does not prove |", "|---|---|---|---|---|---|"]
    lines += [f"| `{c.id}` ({', '.join(c.rows)}) | {c.claim} | {c.conditions} | {c.observes} | {c.fails} | "
              f"{c.misses} |" for c in CHECKS]
    return "\n".join(lines) + "\n"
