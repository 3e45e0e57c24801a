"""GatewayService over gRPC: protobuf in, engine calls, protobuf out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.gateway.backend import GatewayBackend
from services.gateway.errors import EmptyComparison, UnknownFormat

_MIME = {gateway_pb2.RENDER_FORMAT_HTML: "text/html; charset=utf-8"}


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, backend: GatewayBackend) -> None:
        self.backend = backend
        self.gateway = backend.gateway

    async def Compare(self, request: gateway_pb2.CompareRequest,
                      context: grpc.aio.ServicerContext) -> gateway_pb2.CompareResponse:
        self.backend.require_ready()
        comparison = await self.gateway.compare(request, timeout_s=context.time_remaining())
        return gateway_pb2.CompareResponse(comparison=comparison)

    async def CompareStream(self, request: gateway_pb2.CompareRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[gateway_pb2.CompareEvent]:
        self.backend.require_ready()
        events: asyncio.Queue[gateway_pb2.CompareEvent] = asyncio.Queue(maxsize=256)

        def progress(stage: str, detail: str, fraction: float) -> None:
            if not events.full():  # progress is advisory: drop it rather than block the comparison
                events.put_nowait(gateway_pb2.CompareEvent(progress=gateway_pb2.CompareProgress(
                    stage=stage, detail=detail, fraction=fraction)))

        task = asyncio.ensure_future(self.gateway.compare(request, timeout_s=context.time_remaining(),
                                                          progress=progress))
        getter: asyncio.Future[gateway_pb2.CompareEvent] | None = None
        try:
            while not task.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            yield gateway_pb2.CompareEvent(comparison=task.result())
        finally:
            task.cancel()
            if getter is not None:
                getter.cancel()

    async def RenderComparison(self, request: gateway_pb2.RenderComparisonRequest,
                               context: grpc.aio.ServicerContext) -> gateway_pb2.RenderComparisonResponse:
        from services.gateway.pages.render import render_html, render_markdown

        if request.format not in gateway_pb2.RenderFormat.values():
            raise UnknownFormat(request.format)
        if not request.comparison.models and not request.comparison.eval.deployments:
            raise EmptyComparison()
        # Jinja2 + matplotlib take tens of ms to seconds: off the event loop, like the web pages
        if request.format == gateway_pb2.RENDER_FORMAT_HTML:
            content = await asyncio.to_thread(render_html, request.comparison)
            return gateway_pb2.RenderComparisonResponse(content=content, mime_type=_MIME[request.format])
        content = await asyncio.to_thread(render_markdown, request.comparison)
        return gateway_pb2.RenderComparisonResponse(content=content, mime_type="text/markdown; charset=utf-8")

    async def ListModels(self, request: gateway_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> gateway_pb2.ListModelsResponse:
        return await self.gateway.list_models()

    async def ListRoutes(self, request: gateway_pb2.ListRoutesRequest,
                         context: grpc.aio.ServicerContext) -> gateway_pb2.ListRoutesResponse:
        return gateway_pb2.ListRoutesResponse(routes=await self.gateway.list_routes())

    async def GetRoute(self, request: gateway_pb2.GetRouteRequest,
                       context: grpc.aio.ServicerContext) -> gateway_pb2.GetRouteResponse:
        return gateway_pb2.GetRouteResponse(route=await self.gateway.get_route(request.name))

    async def RenderRoute(self, request: gateway_pb2.RenderRouteRequest,
                          context: grpc.aio.ServicerContext) -> gateway_pb2.RenderRouteResponse:
        from services.gateway.pages.route_render import render_route_html, render_route_markdown

        if request.format not in gateway_pb2.RenderFormat.values():
            raise UnknownFormat(request.format)
        view = await self.gateway.get_route(request.name)
        if request.format == gateway_pb2.RENDER_FORMAT_HTML:
            content = await asyncio.to_thread(render_route_html, view)
            return gateway_pb2.RenderRouteResponse(content=content, mime_type=_MIME[request.format])
        content = await asyncio.to_thread(render_route_markdown, view)
        return gateway_pb2.RenderRouteResponse(content=content, mime_type="text/markdown; charset=utf-8")

    async def Feedback(self, request: gateway_pb2.FeedbackRequest,
                       context: grpc.aio.ServicerContext) -> gateway_pb2.FeedbackResponse:
        return await self.gateway.feedback(request)
