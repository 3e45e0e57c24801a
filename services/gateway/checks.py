"""Stage 2 of a comparison: the live checks of every compared model that is served here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from services.gateway import evidence
from services.gateway.probes import ProbeResult, VitProbes, measurement, now_iso, unavailable
from services.gateway.sd35_probes import Sd35Probes

if TYPE_CHECKING:
    from services.gateway.run import Run, Served


def _info_result(run: Run, served: Served) -> ProbeResult:
    """What GetModelInfo itself shows (backend, weights format, encoders, guidance layers)."""
    w = served.weights
    if served.service == "vit" and run.vit is not None:
        caps = {c.id for c in run.vit.response.model.capabilities}
        ok = "safetensors-loading" in caps
        detail = (f"GetModelInfo: {run.vit.response.model.id} on {w.backend}/{w.device} at {w.precision}; "
                  f"weights loaded from safetensors (pickle refused), sha256 {w.digest[:16] or 'not reported'} "
                  f"({w.kind})")
        return ProbeResult("info", ok, detail, [], {}, w, now_iso())
    v = run.variants[served.service[5:]].info
    props = v.model.properties
    encoders = "2 CLIP + T5" if props.get("text_encoder_3") == "t5" else "2 CLIP (T5 dropped)"
    detail = (f"GetModelInfo: {v.model.id} on {v.model.backend}/{v.model.device}, text encoders {encoders}, "
              f"skip-guidance layers {list(v.skip_guidance_layers) or 'none'}, served self-hosted by this "
              f"deployment; weights sha256 {w.digest[:16] or 'not reported'} ({w.kind})")
    ok = v.model.backend == "diffusers"
    return ProbeResult("info", ok, detail, [], {}, w, now_iso())


async def run_checks(run: Run) -> None:
    jobs: list[Awaitable[None]] = []
    compared = [run.served[m] for m in run.opts.model_ids if m in run.served]  # not the extra duellists
    for served in compared:
        served.probes["info"] = _info_result(run, served)
        if served.service == "vit":
            jobs.append(_vit_probes(run, served))
        else:
            jobs.append(_sd35_probes(run, served))
    if jobs:
        run.progress("probe", f"probing {len(compared)} served model(s)", 0.15)
        await asyncio.gather(*jobs)


def _wanted(run: Run, model_id: str, probe: str) -> bool:
    """A probe runs only when a capability of the model needs it (all of them without a catalog)."""
    entry = run.catalog.get(model_id)
    if entry is None:
        return True
    return any(probe in evidence.LIVE_CHECKS.get(c.id, ()) for c in entry.capabilities)


async def _vit_probes(run: Run, served: Served) -> None:
    assert run.vit is not None
    vp = VitProbes(run.ds, run.vit, run.probe_budget)
    w = served.weights
    for name, fn in (("vit.distribution", vp.distribution), ("vit.embedding", vp.embedding),
                     ("vit.batching", vp.latency_and_batching), ("vit.transfer", vp.transfer)):
        if not _wanted(run, served.model_id, name):
            continue
        result = await run.probe("vit", w, name, fn)
        if result is not None:
            served.probes[name] = result
            run.progress("probe", f"{name}: {'ok' if result.ok else 'see evidence'}", 0.3)
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


async def _sd35_probes(run: Run, served: Served) -> None:
    variant = served.service[5:]
    sp = sd35_probes(run, variant)
    w = served.weights
    for short, fn in (("generate", sp.size_and_determinism), ("guidance", sp.guidance),
                      ("resolution", sp.resolution_edges),
                      ("lora", lambda: sp.lora(run.cfg.lora_probe_path))):
        if not _wanted(run, served.model_id, short):
            continue
        result = await run.probe(served.service, w, f"sd35.{variant}.{short}", fn)
        if result is not None:
            served.probes[short] = result
            run.progress("probe", f"sd35 {variant} {short}: {'ok' if result.ok else 'see evidence'}", 0.45)
    turbo = served.probes.get("generate")
    if variant == "large-turbo" and "large" in run.variants and turbo is not None and turbo.ran:
        large = run.variants["large"]
        base = await run.probe("sd35/large", large.weights, "sd35.large.generate",
                               sd35_probes(run, "large").size_and_determinism)
        if base is not None and base.ran:
            speed = base.data["ms"] / turbo.data["ms"]
            served.probes["turbo"] = ProbeResult(
                "sd35.large-turbo.vs-large", True,
                f"same prompt, seed and size: Large {base.data['steps']} steps in {base.data['ms']:.0f} ms, "
                f"Turbo {turbo.data['steps']} steps in {turbo.data['ms']:.0f} ms",
                [measurement("turbo_vs_large_speedup", speed, "x", "sd35.large-turbo.vs-large",
                             "Large time ÷ Turbo time for one image at their default steps", w, now_iso())],
                {"speedup": speed}, w, now_iso())
