"""Sd35Service over gRPC: protobuf ↔ backend calls and events, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.common.errors import InvalidArgument
from services.sd35.backend import Preview, Progress, Queued, Request, Result, Sd35Backend
from versus.common.v1 import common_pb2
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc

VARIANT_NAMES = {sd35_pb2.VARIANT_LARGE: "large", sd35_pb2.VARIANT_LARGE_TURBO: "large-turbo",
                 sd35_pb2.VARIANT_MEDIUM: "medium"}
VARIANT_ENUMS = {v: k for k, v in VARIANT_NAMES.items()}
FORMAT_NAMES = {sd35_pb2.OUTPUT_FORMAT_UNSPECIFIED: "png", sd35_pb2.OUTPUT_FORMAT_PNG: "png",
                sd35_pb2.OUTPUT_FORMAT_JPEG: "jpeg", sd35_pb2.OUTPUT_FORMAT_WEBP: "webp"}
_PRECISION = {"fp32": common_pb2.PRECISION_FP32, "bf16": common_pb2.PRECISION_BF16, "fp16": common_pb2.PRECISION_FP16}

CAPABILITIES = (
    ("text-to-image", "Text-to-image", "MMDiT generation streamed with per-step progress."),
    ("seeded-determinism", "Seeded determinism", "Same request and seed give byte-identical images; image i uses seed + i."),
    ("lora-adapters", "LoRA adapters", "Per-request adapter weights; load and unload at run time."),
    ("previews", "Live previews", "Cheap RGB previews from the latents every K steps."),
    ("cancellation", "Cancellation", "A cancel or expired deadline stops within one denoising step."),
)


def variant_name(value: int, field: str = "variant") -> str:
    if value == sd35_pb2.VARIANT_UNSPECIFIED:
        return ""
    if value not in VARIANT_NAMES:
        raise InvalidArgument(field, f"unknown variant value {value}")
    return VARIANT_NAMES[value]


def to_request(r: sd35_pb2.GenerateRequest) -> Request:
    if r.output_format not in FORMAT_NAMES:
        raise InvalidArgument("output_format", f"unknown output format value {r.output_format}")
    return Request(
        prompt=r.prompt, negative_prompt=r.negative_prompt, variant=variant_name(r.variant), width=r.width,
        height=r.height, steps=r.steps if r.HasField("steps") else None,
        guidance=r.guidance_scale if r.HasField("guidance_scale") else None,
        seed=r.seed if r.HasField("seed") else None, num_images=r.num_images,
        max_sequence_length=r.max_sequence_length, adapters=tuple((a.name, a.weight) for a in r.adapters),
        output_format=FORMAT_NAMES[r.output_format], preview_every=r.preview_every)


def to_event(event: object) -> sd35_pb2.GenerateResponse:
    if isinstance(event, Queued):
        return sd35_pb2.GenerateResponse(queued=sd35_pb2.Queued(position=event.position))
    if isinstance(event, Progress):
        return sd35_pb2.GenerateResponse(progress=sd35_pb2.Progress(step=event.step, total_steps=event.total_steps,
                                                                    elapsed_ms=event.elapsed_ms))
    if isinstance(event, Preview):
        return sd35_pb2.GenerateResponse(preview=sd35_pb2.Preview(
            step=event.step, images=[common_pb2.Image(data=d, mime_type="image/png") for d in event.images]))
    assert isinstance(event, Result)
    t = event.timings_ms
    return sd35_pb2.GenerateResponse(result=sd35_pb2.Result(
        images=[common_pb2.Image(data=d, mime_type=event.mime_type) for d in event.images], seeds=event.seeds,
        variant=VARIANT_ENUMS[event.variant], steps=event.steps, guidance_scale=event.guidance, width=event.width,
        height=event.height, timings=sd35_pb2.GenerationTimings(
            queue_ms=t["queue_ms"], text_encoding_ms=t["text_encoding_ms"], denoising_ms=t["denoising_ms"],
            decode_ms=t["decode_ms"], encode_ms=t["encode_ms"], total_ms=t["total_ms"])))


def _adapter(variant: str, name: str, info: dict) -> sd35_pb2.AdapterInfo:
    return sd35_pb2.AdapterInfo(name=name, path=info["path"], variant=VARIANT_ENUMS[variant], rank=info["rank"],
                                size_bytes=info["size_bytes"])


class Sd35Servicer(sd35_pb2_grpc.Sd35ServiceServicer):
    def __init__(self, backend: Sd35Backend) -> None:
        self.backend = backend

    async def Generate(self, request: sd35_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[sd35_pb2.GenerateResponse]:
        async for event in self.backend.generate(to_request(request), context.time_remaining()):
            yield to_event(event)

    async def ListAdapters(self, request: sd35_pb2.ListAdaptersRequest,
                           context: grpc.aio.ServicerContext) -> sd35_pb2.ListAdaptersResponse:
        rows = self.backend.list_adapters(variant_name(request.variant))
        return sd35_pb2.ListAdaptersResponse(adapters=[_adapter(v, n, i) for v, n, i in rows])

    async def LoadAdapter(self, request: sd35_pb2.LoadAdapterRequest,
                          context: grpc.aio.ServicerContext) -> sd35_pb2.LoadAdapterResponse:
        variant, info = await self.backend.load_adapter(request.name, request.path, variant_name(request.variant))
        return sd35_pb2.LoadAdapterResponse(adapter=_adapter(variant, request.name, info))

    async def UnloadAdapter(self, request: sd35_pb2.UnloadAdapterRequest,
                            context: grpc.aio.ServicerContext) -> sd35_pb2.UnloadAdapterResponse:
        await self.backend.unload_adapter(request.name, variant_name(request.variant))
        return sd35_pb2.UnloadAdapterResponse()

    async def GetModelInfo(self, request: sd35_pb2.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> sd35_pb2.GetModelInfoResponse:
        cfg = self.backend.config
        variants = []
        for runner in self.backend.describe():
            spec = runner.spec
            info = common_pb2.ModelInfo(
                id=runner.source.rstrip("/").split("/")[-1], family="sd3.5", variant=spec.name,
                parameters=runner.parameters, precision=_PRECISION[runner.dtype_name], device=str(runner.device),
                backend="diffusers", license=cfg.license,
                capabilities=[common_pb2.Capability(id=i, title=t, description=d) for i, t, d in CAPABILITIES],
                properties={"transformer_layers": str(runner.num_layers), "max_side": str(runner.max_side),
                            "text_encoder_3": "dropped" if runner.drop_t5 else "t5",
                            "cpu_offload": str(runner.cpu_offload).lower(), "compiled": str(runner.compile).lower()})
            variants.append(sd35_pb2.VariantInfo(
                variant=VARIANT_ENUMS[spec.name], model=info, default_steps=spec.default_steps,
                default_guidance_scale=spec.default_guidance, default_width=cfg.default_size,
                default_height=cfg.default_size, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels,
                skip_guidance_layers=[l for l in spec.skip_layers if l < runner.num_layers]))
        return sd35_pb2.GetModelInfoResponse(variants=variants, default_variant=VARIANT_ENUMS[self.backend.default_variant],
                                             max_prompt_chars=cfg.max_prompt_chars, max_queue=cfg.max_queue)
