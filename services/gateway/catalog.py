"""Stage 1 of a comparison: what the catalog says (ranker.ListModels) and what the model services
serve (GetModelInfo: model id, backend, device, precision, weights)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from versus.ranker.v1 import ranker_pb2
from versus.sd35.v1 import sd35_pb2
from versus.vit.v1 import vit_pb2

from services.common.convert import enum_name
from services.common.errors import NotFound, quote
from services.gateway.downstream import DownstreamError
from services.gateway.probes import VitInfo, weights_of
from services.gateway.sd35_probes import VariantInfo

if TYPE_CHECKING:
    from services.gateway.run import Run


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


def _needs(run: Run, prefix: str) -> bool:
    compared = any(run.gw.served.get(m, "").startswith(prefix) for m in run.opts.model_ids)
    judge = prefix == "vit" and any(run.is_t2i(m) for m in run.opts.model_ids)
    h2h = prefix == "sd35" and run.opts.head_to_head
    return run.ds.has(prefix) and (compared or judge or h2h)


async def read_infos(run: Run) -> None:
    from services.gateway.run import Served

    tasks = []
    if _needs(run, "vit"):
        tasks.append(_vit_info(run))
    if _needs(run, "sd35"):
        tasks.append(_sd35_info(run))
    await asyncio.gather(*tasks)
    for model_id in run.opts.model_ids:
        service = run.gw.served.get(model_id, "")
        weights = run.vit.weights if service == "vit" and run.vit else (
            run.variants[service[5:]].weights if service.startswith("sd35/") and service[5:] in run.variants
            else None)
        if weights is not None:
            run.served[model_id] = Served(model_id, service, weights)
        elif service and run.ds.has(service.split("/")[0]) and service.startswith("sd35/") and run.variants:
            run.unavailable(service, f"the sd35 service does not host variant {service[5:]}")


async def _vit_info(run: Run) -> None:
    try:
        reply = await run.gw.cached_call("vit", "GetModelInfo", vit_pb2.GetModelInfoRequest(), run.budget.timeout())
    except DownstreamError as exc:
        run.unavailable("vit", exc)
        return
    run.vit = VitInfo("vit", reply, weights_of("vit", reply.model))  # type: ignore[attr-defined]


async def _sd35_info(run: Run) -> None:
    try:
        reply = await run.gw.cached_call("sd35", "GetModelInfo", sd35_pb2.GetModelInfoRequest(),
                                         run.budget.timeout())
    except DownstreamError as exc:
        run.unavailable("sd35", exc)
        return
    for v in reply.variants:  # type: ignore[attr-defined]
        name = enum_name(sd35_pb2.Variant, "VARIANT", v.variant)
        run.variants[name] = VariantInfo(name, v, weights_of(f"sd35/{name}", v.model))
