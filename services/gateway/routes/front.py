"""The routes' OIP front door on the gateway's gRPC port: ``inference.GRPCInferenceService`` with ModelInfer as
a raw-bytes pass-through (a generic handler without a deserializer: the request reaches the route as the client's
bytes and the answering side's reply goes back as its bytes), ModelMetadata and ModelReady from a route's primary,
and the server probes. It sits behind the shared interceptor like the gateway's other RPCs (token, request ids,
RPC metrics, error mapping); ServerLive/ServerReady/ModelReady are open as on every OIP port."""

from __future__ import annotations

import grpc
from tritonclient.grpc import service_pb2 as pb

from services.common.calls import MessageTooLarge
from services.common.logs import request_id_var
from services.common.server import ServiceBinding
from services.gateway.routes.table import RouteTable

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class FrontDoor:
    def __init__(self, table: RouteTable, timeout_s: float, max_message_bytes: int, version: str = "") -> None:
        self.table = table
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self.version = version

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.timeout_s if remaining is None else min(self.timeout_s, remaining)

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if self.max_message_bytes and len(raw) > self.max_message_bytes:
            raise MessageTooLarge("request", f"message of {len(raw)} bytes exceeds the limit of "
                                             f"{self.max_message_bytes} bytes; split it")
        call_id = request_id_var.get()
        outcome = await self.table.infer(raw, call_id, self._timeout(context))
        if not outcome.ok:  # the answering side's status, passed through with its details
            await context.abort(outcome.code, outcome.details,
                                trailing_metadata=(*outcome.trailing, ("x-request-id", call_id)))
        return outcome.reply

    async def model_metadata(self, request: pb.ModelMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        try:
            return await self.table.model_metadata(request, self._timeout(context))
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), err.details() or "")
            raise  # unreachable: abort raises

    async def model_ready(self, request: pb.ModelReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            return pb.ModelReadyResponse(ready=await self.table.model_ready(request.name, self._timeout(context)))
        except grpc.aio.AioRpcError:
            return pb.ModelReadyResponse(ready=False)

    async def server_live(self, request: pb.ServerLiveRequest, context: object) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: object) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool(self.table.routes))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: object) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="versus-gateway", version=self.version)

    def handler(self) -> grpc.GenericRpcHandler:
        def typed(fn, request_cls, response_cls):  # noqa: ANN001, ANN202 - generated-code shapes
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=request_cls.FromString,
                                                       response_serializer=response_cls.SerializeToString)

        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),  # bytes in, bytes out
            "ModelMetadata": typed(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelReady": typed(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerLive": typed(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": typed(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ServerMetadata": typed(self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        })


def front_door_binding(front: FrontDoor) -> ServiceBinding:
    """The binding that puts the front door on the gateway's server."""
    return ServiceBinding(SERVICE_NAME, lambda server: server.add_generic_rpc_handlers((front.handler(),)))
