"""Sd35Service over gRPC: protobuf ↔ backend calls and events, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc

from services.sd35.backend import Sd35Backend
from services.sd35.convert import (
    adapter_to_proto,
    description_to_proto,
    event_to_proto,
    request_from_proto,
    variant_from_proto,
)


class Sd35Servicer(sd35_pb2_grpc.Sd35ServiceServicer):
    def __init__(self, backend: Sd35Backend) -> None:
        self.backend = backend

    async def Generate(self, request: sd35_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[sd35_pb2.GenerateResponse]:
        async for event in self.backend.generate(request_from_proto(request), context.time_remaining()):
            yield event_to_proto(event)

    async def ListAdapters(self, request: sd35_pb2.ListAdaptersRequest,
                           context: grpc.aio.ServicerContext) -> sd35_pb2.ListAdaptersResponse:
        infos = self.backend.list_adapters(variant_from_proto(request.variant))
        return sd35_pb2.ListAdaptersResponse(adapters=[adapter_to_proto(i) for i in infos])

    async def LoadAdapter(self, request: sd35_pb2.LoadAdapterRequest,
                          context: grpc.aio.ServicerContext) -> sd35_pb2.LoadAdapterResponse:
        info = await self.backend.load_adapter(request.name, request.path, variant_from_proto(request.variant))
        return sd35_pb2.LoadAdapterResponse(adapter=adapter_to_proto(info))

    async def UnloadAdapter(self, request: sd35_pb2.UnloadAdapterRequest,
                            context: grpc.aio.ServicerContext) -> sd35_pb2.UnloadAdapterResponse:
        await self.backend.unload_adapter(request.name, variant_from_proto(request.variant))
        return sd35_pb2.UnloadAdapterResponse()

    async def GetModelInfo(self, request: sd35_pb2.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> sd35_pb2.GetModelInfoResponse:
        return description_to_proto(self.backend.description())
