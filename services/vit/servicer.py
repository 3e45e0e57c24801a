"""VitService over gRPC: converts protobuf to backend calls and back, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.convert import item_error, model_info_to_proto
from services.common.errors import InvalidArgument, VersusError
from services.vit.backend import VitBackend
from services.vit.heads import Head
from services.vit.tasks import Classification, Timings

_POOLING = {vit_pb2.POOLING_UNSPECIFIED: "cls", vit_pb2.POOLING_CLS: "cls", vit_pb2.POOLING_MEAN: "mean"}
def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    return context.time_remaining()


def _timings(t: Timings) -> common_pb2.Timings:
    return common_pb2.Timings(
        queue_ms=t.queue_ms, compute_ms=t.compute_ms, preprocess_ms=t.preprocess_ms, total_ms=t.total_ms
    )


def _classification(c: Classification) -> vit_pb2.Classification:
    return vit_pb2.Classification(
        labels=[vit_pb2.Label(index=lab.index, label=lab.label, score=lab.score) for lab in c.labels],
        logits=c.logits if c.logits is not None else (),
    )


def _top_k(request: vit_pb2.ClassifyRequest | vit_pb2.ClassifyStreamRequest) -> int | None:
    return request.top_k if request.HasField("top_k") else None


class VitServicer(vit_pb2_grpc.VitServiceServicer):
    """Thin adapter from ``versus.vit.v1.VitService`` to :class:`VitBackend`."""

    def __init__(self, backend: VitBackend) -> None:
        self.backend = backend

    async def Classify(
        self, request: vit_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> vit_pb2.ClassifyResponse:
        results, timings = await self.backend.classify(
            [img.data for img in request.images],
            _top_k(request),
            request.head,
            _timeout(context),
            logits=request.return_logits,
        )
        return vit_pb2.ClassifyResponse(
            results=[_classification(r) for r in results], timings=_timings(timings), model_id=self.backend.model_id
        )

    async def Embed(self, request: vit_pb2.EmbedRequest, context: grpc.aio.ServicerContext) -> vit_pb2.EmbedResponse:
        if request.pooling not in _POOLING:
            raise InvalidArgument("pooling", f"unknown pooling value {request.pooling}")
        results, timings = await self.backend.embed(
            [img.data for img in request.images],
            list(request.layers),
            _POOLING[request.pooling],
            request.normalize,
            _timeout(context),
        )
        return vit_pb2.EmbedResponse(
            results=[
                vit_pb2.ImageEmbeddings(embeddings=[vit_pb2.Embedding(layer=layer, values=vec) for layer, vec in per])
                for per in results
            ],
            timings=_timings(timings),
            model_id=self.backend.model_id,
            dimension=self.backend.embedding_dimension,
        )

    async def _stream_item(
        self, item: vit_pb2.ClassifyStreamRequest, timeout: float | None
    ) -> vit_pb2.ClassifyStreamResponse:
        try:
            results, timings = await self.backend.classify(
                [item.image.data], _top_k(item), item.head, timeout, field="image.data"
            )
        except VersusError as exc:
            return vit_pb2.ClassifyStreamResponse(id=item.id, error=item_error(exc))
        return vit_pb2.ClassifyStreamResponse(id=item.id, result=_classification(results[0]), timings=_timings(timings))

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[vit_pb2.ClassifyStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[vit_pb2.ClassifyStreamResponse]:
        # Items run concurrently (so they batch) but answer in request order; the bounded queue of
        # pending items is the stream's back-pressure.
        pending: asyncio.Queue[asyncio.Task[vit_pb2.ClassifyStreamResponse] | None] = asyncio.Queue(
            self.backend.config.stream_window
        )

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

    async def GetModelInfo(
        self, request: vit_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vit_pb2.GetModelInfoResponse:
        d = self.backend.description()
        return vit_pb2.GetModelInfoResponse(
            model=model_info_to_proto(d.info),
            image_size=d.image_size,
            num_labels=d.num_labels,
            num_hidden_layers=d.num_hidden_layers,
            hidden_size=d.hidden_size,
            max_images_per_request=d.max_images_per_request,
            max_batch_size=d.max_batch_size,
        )

    async def CreateHead(
        self, request: vit_pb2.CreateHeadRequest, context: grpc.aio.ServicerContext
    ) -> vit_pb2.CreateHeadResponse:
        head = await self.backend.create_head(
            request.name,
            [e.image.data for e in request.examples],
            [e.label for e in request.examples],
            request.epochs,
            _timeout(context),
        )
        return vit_pb2.CreateHeadResponse(head=_head_info(head))

    async def ListHeads(
        self, request: vit_pb2.ListHeadsRequest, context: grpc.aio.ServicerContext
    ) -> vit_pb2.ListHeadsResponse:
        return vit_pb2.ListHeadsResponse(heads=[_head_info(h) for h in self.backend.list_heads()])

    async def DeleteHead(
        self, request: vit_pb2.DeleteHeadRequest, context: grpc.aio.ServicerContext
    ) -> vit_pb2.DeleteHeadResponse:
        self.backend.delete_head(request.name)
        return vit_pb2.DeleteHeadResponse()


def _head_info(head: Head) -> vit_pb2.HeadInfo:
    return vit_pb2.HeadInfo(
        name=head.name, labels=list(head.labels), examples=head.examples, training_accuracy=head.training_accuracy
    )
