"""Stage 1 of a comparison: the catalog's entries, and each compared model that a configured service hosts
as :class:`~services.gateway.compare.run.Served` (when its service's GetModelInfo fails it is still served
here, with the reason: its live rows are then UNAVAILABLE)."""

from __future__ import annotations

import asyncio

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.gateway.compare import catalog
from services.gateway.compare.run import Run, Served
from services.gateway.compare.sd35_probes import VariantInfo
from services.gateway.config import ServedBy
from services.gateway.downstream import DownstreamError


async def read_catalog(run: Run) -> None:
    try:
        run.catalog, run.played = await catalog.read_catalog(run.gw.cached_call, run.budget.timeout(),
                                                             run.opts.model_ids)
    except DownstreamError as exc:
        run.unavailable("ranker", exc)


def _attest(run: Run) -> catalog.Attest:
    """Keep an operator attestation in the ranker (the first attested run's fingerprint wins)."""
    async def attest(model_id: str, digest: str, fingerprint: str) -> tuple[str, bool, str]:
        reply = await run.ds.call("ranker", "RecordAttestation", ranker_pb2.RecordAttestationRequest(
            attestation=ranker_pb2.Attestation(model_id=model_id, digest=digest, fingerprint=fingerprint)),
            run.budget.timeout())
        a = reply.attestation  # type: ignore[attr-defined]
        return a.fingerprint, reply.created, a.recorded_at  # type: ignore[attr-defined]
    return attest


def _needs(run: Run, service: str) -> bool:
    served = run.settings.served
    compared = any(by.service == service for m in run.opts.model_ids if (by := served.get(m)) is not None)
    judge = service == "vit" and any(run.is_t2i(m) for m in run.opts.model_ids)
    h2h = service == "sd35" and run.opts.head_to_head
    return compared or judge or h2h


async def read_infos(run: Run) -> None:
    """GetModelInfo of each needed target; a failing one is recorded under its component ("vit", "sd35", or an
    SD3.5 variant's own "sd35-large" …), so only the models it serves lose their live rows."""
    errors: dict[str, gateway_pb2.Unavailable] = {}
    weights_of = catalog.weights_judge(run.catalog, run.settings.served, run.settings.attested,
                                       run.gw.weights_store, _attest(run) if run.ds.has("ranker") else None,
                                       run.budget.timeout())
    timeout = run.budget.timeout()
    sd35_targets = run.ds.sd35_components() if _needs(run, "sd35") else []
    hosted: dict[str, dict[str, VariantInfo]] = {}

    async def vit() -> None:
        try:
            run.vit = await catalog.read_vit_info(run.gw.cached_call, timeout, weights_of)
        except DownstreamError as exc:
            errors["vit"] = run.unavailable("vit", exc)

    async def sd35(component: str) -> None:
        def routed(variant: str) -> bool:
            return run.ds.component(ServedBy("sd35", variant)) == component

        try:
            hosted[component] = await catalog.read_sd35_info(run.gw.cached_call, timeout, weights_of, component,
                                                             routed)
        except DownstreamError as exc:
            errors[component] = run.unavailable(component, exc)

    await asyncio.gather(*([vit()] if run.ds.has("vit") and _needs(run, "vit") else []), *map(sd35, sd35_targets))
    for component in sd35_targets:  # in configuration order, whichever answered first
        run.variants.update(hosted.get(component, {}))
    for model_id in run.opts.model_ids:
        _serve(run, model_id, errors, set(hosted))


def _serve(run: Run, model_id: str, errors: dict[str, gateway_pb2.Unavailable], answered: set[str]) -> None:
    by = run.settings.served.get(model_id)
    if by is None or not run.ds.serves(by):
        return
    component = run.ds.component(by)
    if component in errors:
        run.served[model_id] = Served(model_id, by, gateway_pb2.ServedWeights(service=str(by), kind="unknown"),
                                      info_error=errors[component])
    elif not by.t2i and run.vit is not None:
        run.served[model_id] = Served(model_id, by, run.vit.weights, described=catalog.vit_described(run.vit),
                                      reported=catalog.reported(run.vit.response.model, run.vit.weights))
    elif by.variant in run.variants:
        v = run.variants[by.variant]
        run.served[model_id] = Served(model_id, by, v.weights, described=catalog.sd35_described(v),
                                      reported=catalog.reported(v.info.model, v.weights))
    elif by.t2i and component in answered:
        run.unavailable(str(by), f"the {component} service does not host variant {by.variant}")
