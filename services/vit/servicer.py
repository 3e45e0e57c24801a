"""VitService over gRPC: converts protobuf to backend calls and back, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from services.common.errors import InvalidArgument, VersusError
from services.common.status import status_for
from services.vit.backend import Classification, Timings, VitBackend
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

_POOLING = {vit_pb2.POOLING_UNSPECIFIED: "cls", vit_pb2.POOLING_CLS: "cls", vit_pb2.POOLING_MEAN: "mean"}
_PRECISION = {"fp32": common_pb2.PRECISION_FP32, "bf16": common_pb2.PRECISION_BF16,
              "fp16": common_pb2.PRECISION_FP16, "int8": common_pb2.PRECISION_INT8}

CAPABILITIES = (
    ("image-classification", "Image classification", "Top-k labels with softmax scores over the model's id2label."),
    ("image-embeddings", "Image embeddings", "CLS or mean-pooled vectors from any hidden layer, optionally L2-normalised."),
    ("batch-inference", "Batch inference", "Dynamic micro-batching across concurrent requests, plus a bidirectional bulk stream."),
    ("custom-heads", "Custom heads", "Linear probes trained on the model's embeddings from labelled examples."),
    ("safetensors-loading", "Safetensors loading", "from_pretrained on a directory or hub id; pickle checkpoints refused."),
    ("quantization", "Reduced precision", "fp32, bf16/fp16 and dynamic int8 quantization of Linear layers."),
)


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    return context.time_remaining()


def _timings(t: Timings) -> common_pb2.Timings:
    return common_pb2.Timings(queue_ms=t.queue_ms, compute_ms=t.compute_ms, preprocess_ms=t.preprocess_ms, total_ms=t.total_ms)


def _classification(c: Classification) -> vit_pb2.Classification:
    return vit_pb2.Classification(labels=[vit_pb2.Label(index=l.index, label=l.label, score=l.score) for l in c.labels],
                                  logits=c.logits if c.logits is not None else ())


def _top_k(request: vit_pb2.ClassifyRequest | vit_pb2.ClassifyStreamRequest) -> int | None:
    return request.top_k if request.HasField("top_k") else None


class VitServicer(vit_pb2_grpc.VitServiceServicer):
    """Thin adapter from ``versus.vit.v1.VitService`` to :class:`VitBackend`."""

    def __init__(self, backend: VitBackend) -> None:
        self.backend = backend

    async def Classify(self, request: vit_pb2.ClassifyRequest, context: grpc.aio.ServicerContext) -> vit_pb2.ClassifyResponse:
        results, timings = await self.backend.classify(
            [img.data for img in request.images], _top_k(request), request.head, _timeout(context),
            logits=request.return_logits)
        return vit_pb2.ClassifyResponse(results=[_classification(r) for r in results], timings=_timings(timings),
                                        model_id=self.backend.model_id)

    async def Embed(self, request: vit_pb2.EmbedRequest, context: grpc.aio.ServicerContext) -> vit_pb2.EmbedResponse:
        if request.pooling not in _POOLING:
            raise InvalidArgument("pooling", f"unknown pooling value {request.pooling}")
        results, timings = await self.backend.embed(
            [img.data for img in request.images], list(request.layers), _POOLING[request.pooling], request.normalize,
            _timeout(context))
        return vit_pb2.EmbedResponse(
            results=[vit_pb2.ImageEmbeddings(embeddings=[vit_pb2.Embedding(layer=layer, values=vec) for layer, vec in per])
                     for per in results],
            timings=_timings(timings), model_id=self.backend.model_id, dimension=self.backend.model.hidden_size)

    async def _stream_item(self, item: vit_pb2.ClassifyStreamRequest, timeout: float | None) -> vit_pb2.ClassifyStreamResponse:
        try:
            results, timings = await self.backend.classify([item.image.data], _top_k(item), item.head, timeout, field="image")
        except VersusError as exc:
            return vit_pb2.ClassifyStreamResponse(id=item.id, error=common_pb2.ItemError(
                code=status_for(exc).value[0], message=exc.message))
        return vit_pb2.ClassifyStreamResponse(id=item.id, result=_classification(results[0]), timings=_timings(timings))

    async def ClassifyStream(self, request_iterator: AsyncIterator[vit_pb2.ClassifyStreamRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[vit_pb2.ClassifyStreamResponse]:
        # Items run concurrently (so they batch) but answer in request order; the bounded queue of
        # pending items is the stream's back-pressure.
        pending: asyncio.Queue[asyncio.Task[vit_pb2.ClassifyStreamResponse] | None] = asyncio.Queue(
            self.backend.config.stream_window)

        async def read() -> None:
            try:
                async for item in request_iterator:
                    await pending.put(asyncio.ensure_future(self._stream_item(item, _timeout(context))))
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # surface a failed read
        finally:
            reader.cancel()
            while not pending.empty():
                if (task := pending.get_nowait()) is not None:
                    task.cancel()

    async def GetModelInfo(self, request: vit_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> vit_pb2.GetModelInfoResponse:
        d = self.backend.describe()
        info = common_pb2.ModelInfo(
            id=d.model_id, family="vit", variant=f"patch{self.backend.model.config.patch_size}-{d.image_size}",
            parameters=d.parameters, precision=_PRECISION[d.precision], device=d.device, backend="torch",
            license=d.license,
            capabilities=[common_pb2.Capability(id=i, title=t, description=s) for i, t, s in CAPABILITIES],
            properties={"image_size": str(d.image_size), "num_labels": str(d.num_labels),
                        "hidden_size": str(d.hidden_size), "num_hidden_layers": str(d.num_hidden_layers)})
        return vit_pb2.GetModelInfoResponse(
            model=info, image_size=d.image_size, num_labels=d.num_labels, num_hidden_layers=d.num_hidden_layers,
            hidden_size=d.hidden_size, max_images_per_request=d.max_images_per_request, max_batch_size=d.max_batch_size)

    async def CreateHead(self, request: vit_pb2.CreateHeadRequest, context: grpc.aio.ServicerContext) -> vit_pb2.CreateHeadResponse:
        head = await self.backend.create_head(request.name, [e.image.data for e in request.examples],
                                              [e.label for e in request.examples], request.epochs, _timeout(context))
        return vit_pb2.CreateHeadResponse(head=_head_info(head))

    async def ListHeads(self, request: vit_pb2.ListHeadsRequest, context: grpc.aio.ServicerContext) -> vit_pb2.ListHeadsResponse:
        return vit_pb2.ListHeadsResponse(heads=[_head_info(h) for h in self.backend.heads.list()])

    async def DeleteHead(self, request: vit_pb2.DeleteHeadRequest, context: grpc.aio.ServicerContext) -> vit_pb2.DeleteHeadResponse:
        self.backend.heads.delete(request.name)
        return vit_pb2.DeleteHeadResponse()


def _head_info(head) -> vit_pb2.HeadInfo:  # noqa: ANN001 - services.vit.heads.Head
    return vit_pb2.HeadInfo(name=head.name, labels=list(head.labels), examples=head.examples,
                            training_accuracy=head.training_accuracy)
