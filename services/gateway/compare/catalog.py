"""Catalog access: what the catalog says (ranker.ListModels) and what the model services say they serve
(GetModelInfo: model id, backend, device, precision, weights). Plain calls on what they are given; the
stage that stores the answers in a comparison is :mod:`services.gateway.compare.serving`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

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
from services.gateway.weights import Ask, Attest, check_attestation, check_known_answers, classify_weights, read_store
from services.gateway.weights_store import WeightsStore

#: A read-only call whose answer the gateway may share for a few seconds: (component, method, request, timeout).
CachedCall = Callable[[str, str, object, float], Awaitable[object]]
#: What the gateway establishes about one service's weights from its GetModelInfo.
WeightsOf = Callable[[ServedBy, common_pb2.ModelInfo, Ask | None], Awaitable[gateway_pb2.ServedWeights]]


async def read_catalog(call: CachedCall, timeout: float, model_ids: tuple[str, ...]
                       ) -> tuple[dict[str, ranker_pb2.CatalogEntry], dict[str, int]]:
    """Every catalog entry and its times matched; a compared id the catalog lacks is NOT_FOUND."""
    listed = await call("ranker", "ListModels", ranker_pb2.ListModelsRequest(), timeout)
    catalog = {m.id: m for m in listed.models}  # type: ignore[attr-defined]
    played = dict(zip(catalog, listed.times_matched, strict=True))  # type: ignore[attr-defined]
    for i, model_id in enumerate(model_ids):
        if model_id not in catalog:
            raise NotFound(f"model_ids[{i}]: unknown model {quote(model_id)}", resource_type="model",
                           resource_name=model_id)
    return catalog, played


def weights_judge(catalog: Mapping[str, ranker_pb2.CatalogEntry], served: Mapping[str, ServedBy],
                  attested: Mapping[str, str], store: WeightsStore, attest: Attest | None, wait_s: float) -> WeightsOf:
    """From files the gateway hashes itself in ``store``: real only on every published digest, operator-attested
    on a pinned one. Hashing runs off the event loop (a first read of a large checkpoint takes minutes)."""
    async def weights_of(by: ServedBy, info: common_pb2.ModelInfo, ask: Ask | None) -> gateway_pb2.ServedWeights:
        model_id = next((m for m, s in served.items() if s == by), "")
        entry = catalog.get(model_id)
        reading = await read_store(store, info, entry, wait_s)
        out = classify_weights(str(by), info, entry, dict(attested), reading)
        await check_known_answers(out, reading, ask)
        await check_attestation(out, entry.id if entry is not None else info.id, ask, attest)
        return out
    return weights_of


async def read_vit_info(call: CachedCall, timeout: float, weights_of: WeightsOf) -> VitInfo:
    reply = await call("vit", "GetModelInfo", vit_pb2.GetModelInfoRequest(), timeout)

    async def ask(images: list[bytes]) -> list[list[float]]:
        answer = await call("vit", "Classify", vit_pb2.ClassifyRequest(
            images=[common_pb2.Image(data=b) for b in images], top_k=1, return_logits=True), timeout)
        return [list(r.logits) for r in answer.results]  # type: ignore[attr-defined]

    return VitInfo("vit", reply, await weights_of(ServedBy("vit"), reply.model, ask))  # type: ignore[arg-type, attr-defined]


async def read_sd35_info(call: CachedCall, timeout: float, weights_of: WeightsOf, component: str = "sd35",
                         routed: Callable[[str], bool] = lambda _variant: True) -> dict[str, VariantInfo]:
    """The variants the SD3.5 target ``component`` hosts, those ``routed`` to it only (a variant with its own
    deployment is read from that one)."""
    reply = await call(component, "GetModelInfo", sd35_pb2.GetModelInfoRequest(), timeout)
    out = {}
    for v in reply.variants:  # type: ignore[attr-defined]
        name = enum_name(sd35_pb2.Variant, "VARIANT", v.variant)
        if routed(name):
            out[name] = VariantInfo(name, v, await weights_of(ServedBy("sd35", name), v.model, None))
    return out


def reported(model: common_pb2.ModelInfo, w: gateway_pb2.ServedWeights) -> str:
    """GetModelInfo's own words, shown as "reported by the service"."""
    props = model.properties
    extra = f", text encoder 3: {props['text_encoder_3']}" if "text_encoder_3" in props else ""
    return (f"GetModelInfo says {model.id} runs on {model.backend or '?'}/{model.device or '?'} at "
            f"{w.precision or '?'}{extra}, weights sha256 {w.reported_digest[:16] or 'not reported'} "
            f"({props.get('weights_kind') or 'kind not reported'})")


def vit_described(vit: VitInfo) -> str:
    r = vit.response
    return f"a {r.num_hidden_layers}-layer {vit.weights.kind} ViT, {r.num_labels} labels, as reported by the service"


def sd35_described(v: VariantInfo) -> str:
    layers = v.info.model.properties.get("transformer_layers", "?")
    return f"a {layers}-layer {v.weights.kind} {v.name} pipeline, as reported by the service"
