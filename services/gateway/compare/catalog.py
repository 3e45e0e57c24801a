"""Stage 1 of a comparison: what the catalog says (ranker.ListModels) and what the model services
serve (GetModelInfo: model id, backend, device, precision, weights)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2
from versus.sd35.v1 import sd35_pb2
from versus.vit.v1 import vit_pb2

from services.common.convert import enum_name
from services.common.errors import NotFound, quote
from services.gateway.compare.probes import VitInfo
from services.gateway.compare.sd35_probes import VariantInfo
from services.gateway.config import ServedBy
from services.gateway.downstream import DownstreamError
from services.gateway.weights import classify_weights

if TYPE_CHECKING:
    from services.gateway.compare.run import Run


async def read_catalog(run: Run) -> None:
    try:
        listed = await run.gw.cached_call("ranker", "ListModels", ranker_pb2.ListModelsRequest(),
                                          run.budget.timeout())
    except DownstreamError as exc:
        run.unavailable("ranker", exc)
        return
    run.catalog = {m.id: m for m in listed.models}  # type: ignore[attr-defined]
    run.played = dict(zip(run.catalog, listed.times_matched, strict=True))  # type: ignore[attr-defined]
    for i, model_id in enumerate(run.opts.model_ids):
        if model_id not in run.catalog:
            raise NotFound(f"model_ids[{i}]: unknown model {quote(model_id)}", resource_type="model",
                           resource_name=model_id)


def _needs(run: Run, service: str) -> bool:
    compared = any(by.service == service for m in run.opts.model_ids if (by := run.gw.served.get(m)) is not None)
    judge = service == "vit" and any(run.is_t2i(m) for m in run.opts.model_ids)
    h2h = service == "sd35" and run.opts.head_to_head
    return run.ds.has(service) and (compared or judge or h2h)


async def read_infos(run: Run) -> None:
    """Each compared model that a configured service hosts becomes :class:`Served`; when its service's
    GetModelInfo fails, it is still served here, with the reason (its live rows are then UNAVAILABLE)."""
    from services.gateway.compare.run import Served

    errors: dict[str, gateway_pb2.Unavailable] = {}
    tasks = []
    if _needs(run, "vit"):
        tasks.append(_vit_info(run, errors))
    if _needs(run, "sd35"):
        tasks.append(_sd35_info(run, errors))
    await asyncio.gather(*tasks)
    for model_id in run.opts.model_ids:
        by = run.gw.served.get(model_id)
        if by is None or not run.ds.has(by.service):
            continue
        if by.service in errors:
            run.served[model_id] = Served(model_id, by, gateway_pb2.ServedWeights(service=str(by), kind="unknown"),
                                          info_error=errors[by.service])
        elif not by.t2i and run.vit is not None:
            run.served[model_id] = Served(model_id, by, run.vit.weights, described=_vit_described(run.vit),
                                          reported=_reported(run.vit.response.model, run.vit.weights))
        elif by.variant in run.variants:
            v = run.variants[by.variant]
            run.served[model_id] = Served(model_id, by, v.weights, described=_sd35_described(v),
                                          reported=_reported(v.info.model, v.weights))
        elif run.variants:
            run.unavailable(str(by), f"the sd35 service does not host variant {by.variant}")


def _reported(model: common_pb2.ModelInfo, w: gateway_pb2.ServedWeights) -> str:
    props = model.properties
    extra = f", text encoder 3: {props['text_encoder_3']}" if "text_encoder_3" in props else ""
    return (f"GetModelInfo says {model.id} runs on {model.backend or '?'}/{model.device or '?'} at "
            f"{w.precision or '?'}{extra}, weights sha256 {w.digest[:16] or 'not reported'} "
            f"({props.get('weights_kind') or 'kind not reported'})")


def _vit_described(vit: VitInfo) -> str:
    r = vit.response
    return f"a {r.num_hidden_layers}-layer {vit.weights.kind} ViT, {r.num_labels} labels"


def _sd35_described(v: VariantInfo) -> str:
    layers = v.info.model.properties.get("transformer_layers", "?")
    return f"a {layers}-layer {v.weights.kind} {v.name} pipeline"


async def _vit_info(run: Run, errors: dict[str, gateway_pb2.Unavailable]) -> None:
    try:
        reply = await run.gw.cached_call("vit", "GetModelInfo", vit_pb2.GetModelInfoRequest(), run.budget.timeout())
    except DownstreamError as exc:
        errors["vit"] = run.unavailable("vit", exc)
        return
    run.vit = VitInfo("vit", reply, _weights(run, ServedBy("vit"), reply.model))  # type: ignore[attr-defined]


async def _sd35_info(run: Run, errors: dict[str, gateway_pb2.Unavailable]) -> None:
    try:
        reply = await run.gw.cached_call("sd35", "GetModelInfo", sd35_pb2.GetModelInfoRequest(),
                                         run.budget.timeout())
    except DownstreamError as exc:
        errors["sd35"] = run.unavailable("sd35", exc)
        return
    for v in reply.variants:  # type: ignore[attr-defined]
        name = enum_name(sd35_pb2.Variant, "VARIANT", v.variant)
        run.variants[name] = VariantInfo(name, v, _weights(run, ServedBy("sd35", name), v.model))


def _weights(run: Run, service: ServedBy, info: common_pb2.ModelInfo) -> gateway_pb2.ServedWeights:
    """What the gateway establishes about a service's weights (real only on published digests and the hub id,
    operator-attested on a pinned digest); the catalog is read before the infos, so the entry is known."""
    model_id = next((m for m, s in run.gw.served.items() if s == service), "")
    return classify_weights(str(service), info, run.catalog.get(model_id), run.cfg.attested_digests())
