"""SD3.5 protobuf ↔ domain conversions: the one place for the variant and output-format enums.

Imports the generated contracts and the torch-free domain modules only, so tools (the CLI, the
benchmarks) can map names to enums without loading a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from versus.common.v1 import common_pb2
from versus.sd35.v1 import sd35_pb2

from services.common.convert import enum_value, model_info_to_proto
from services.common.errors import InvalidArgument
from services.sd35.adapters import AdapterInfo
from services.sd35.requests import FORMATS, Event, Preview, Progress, Queued, Request, Result
from services.sd35.variants import VARIANTS

if TYPE_CHECKING:  # the backend loads torch; this module must not
    from services.sd35.backend import ServiceDescription, VariantDescription

#: variant name ↔ ``versus.sd35.v1.Variant`` (``large-turbo`` ↔ ``VARIANT_LARGE_TURBO``).
VARIANT_TO_PROTO = {name: enum_value(sd35_pb2.Variant, "VARIANT", name) for name in VARIANTS}
VARIANT_FROM_PROTO = {value: name for name, value in VARIANT_TO_PROTO.items()}
#: output format name ↔ ``versus.sd35.v1.OutputFormat`` (UNSPECIFIED means PNG).
FORMAT_TO_PROTO = {name: enum_value(sd35_pb2.OutputFormat, "OUTPUT_FORMAT", name) for name in FORMATS}
FORMAT_FROM_PROTO = {sd35_pb2.OUTPUT_FORMAT_UNSPECIFIED: "png"} | {v: k for k, v in FORMAT_TO_PROTO.items()}


def variant_from_proto(value: int, field: str = "variant") -> str:
    """Variant name, or "" for UNSPECIFIED (the server's default)."""
    if value == sd35_pb2.VARIANT_UNSPECIFIED:
        return ""
    if value not in VARIANT_FROM_PROTO:
        raise InvalidArgument(field, f"unknown variant value {value}")
    return VARIANT_FROM_PROTO[value]


def request_from_proto(r: sd35_pb2.GenerateRequest) -> Request:
    if r.output_format not in FORMAT_FROM_PROTO:
        raise InvalidArgument("output_format", f"unknown output format value {r.output_format}")
    return Request(
        prompt=r.prompt, negative_prompt=r.negative_prompt, variant=variant_from_proto(r.variant), width=r.width,
        height=r.height, steps=r.steps if r.HasField("steps") else None,
        guidance=r.guidance_scale if r.HasField("guidance_scale") else None,
        seed=r.seed if r.HasField("seed") else None, num_images=r.num_images,
        max_sequence_length=r.max_sequence_length, adapters=tuple((a.name, a.weight) for a in r.adapters),
        output_format=FORMAT_FROM_PROTO[r.output_format], preview_every=r.preview_every)


def _result_to_proto(event: Result) -> sd35_pb2.Result:
    t = event.timings_ms
    return sd35_pb2.Result(
        images=[common_pb2.Image(data=d, mime_type=event.mime_type) for d in event.images], seeds=event.seeds,
        variant=VARIANT_TO_PROTO[event.variant], steps=event.steps, guidance_scale=event.guidance, width=event.width,
        height=event.height, timings=sd35_pb2.GenerationTimings(
            queue_ms=t["queue_ms"], text_encoding_ms=t["text_encoding_ms"], denoising_ms=t["denoising_ms"],
            decode_ms=t["decode_ms"], encode_ms=t["encode_ms"], total_ms=t["total_ms"]))


def event_to_proto(event: Event) -> sd35_pb2.GenerateResponse:
    if isinstance(event, Queued):
        return sd35_pb2.GenerateResponse(queued=sd35_pb2.Queued(position=event.position))
    if isinstance(event, Progress):
        return sd35_pb2.GenerateResponse(progress=sd35_pb2.Progress(step=event.step, total_steps=event.total_steps,
                                                                    elapsed_ms=event.elapsed_ms))
    if isinstance(event, Preview):
        return sd35_pb2.GenerateResponse(preview=sd35_pb2.Preview(
            step=event.step, images=[common_pb2.Image(data=d, mime_type="image/png") for d in event.images]))
    return sd35_pb2.GenerateResponse(result=_result_to_proto(event))


def adapter_to_proto(info: AdapterInfo) -> sd35_pb2.AdapterInfo:
    return sd35_pb2.AdapterInfo(name=info.name, path=info.path, variant=VARIANT_TO_PROTO[info.variant], rank=info.rank,
                                size_bytes=info.size_bytes)


def _variant_info(v: VariantDescription) -> sd35_pb2.VariantInfo:
    return sd35_pb2.VariantInfo(
        variant=VARIANT_TO_PROTO[v.spec.name], model=model_info_to_proto(v.model), default_steps=v.spec.default_steps,
        default_guidance_scale=v.spec.default_guidance, default_width=v.default_width, default_height=v.default_height,
        min_pixels=v.spec.min_pixels, max_pixels=v.spec.max_pixels, skip_guidance_layers=v.skip_guidance_layers,
        max_side=v.max_side)


def description_to_proto(d: ServiceDescription) -> sd35_pb2.GetModelInfoResponse:
    return sd35_pb2.GetModelInfoResponse(
        variants=[_variant_info(v) for v in d.variants], default_variant=VARIANT_TO_PROTO[d.default_variant],
        max_prompt_chars=d.max_prompt_chars, max_queue=d.max_queue, max_adapters=d.max_adapters)
