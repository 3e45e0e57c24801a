"""``inference.GRPCInferenceService`` (Open Inference Protocol, KServe V2) over gRPC: messages in and out
of a :class:`~services.common.oip.ModelRepository`, nothing more. Besides the core protocol it answers
Triton's ModelConfig and ModelStatistics (:mod:`services.common.oip_info`).

It is registered beside a service's native API on the same server, so the shared interceptor gives it
the same auth, request ids, metrics, size limits, malformed-message handling and ``google.rpc`` error
details. ServerLive, ServerReady and ModelReady are open like ``grpc.health.v1``
(:data:`services.common.interceptors.OPEN_METHODS`). RPCs outside the core protocol and Triton's
streaming extension (model repository, shared memory, trace and log settings) are not overridden: the
generated base raises NotImplementedError, which the interceptor answers UNIMPLEMENTED.

ModelStreamInfer is Triton's decoupled streaming extension, not part of the core protocol: each
request gets zero or more progress responses and one last response with the ``triton_final_response``
parameter; a request's error comes back as that response's ``error_message`` and the stream goes on.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Sequence

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from services.common.errors import VersusError
from services.common.oip import FINAL_RESPONSE, ModelRepository, OipModel
from services.common.oip_rest import OipRest
from services.common.server import ServiceBinding
from services.common.status import status_for

#: ServerMetadata.extensions: request parameters (``top_k``, ``head``), the streaming RPC's final flag, and
#: Triton's ModelConfig and ModelStatistics (perf_analyzer reads server-side statistics only when
#: ``statistics`` is listed).
EXTENSIONS = ("parameters", "decoupled", "model_configuration", "statistics")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class OipServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The core protocol plus ModelStreamInfer, onto one repository of model adapters."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.repository.server_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.repository.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return self.repository.server_metadata()

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        return self.repository.model_metadata(request.name, request.version)

    async def ModelConfig(self, request: pb.ModelConfigRequest,
                          context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        return self.repository.model_config(request.name, request.version)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        return self.repository.statistics(request.name, request.version)

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        model, domain = self.repository.decode(request)
        return self.repository.encode(domain, await self.repository.infer(model, domain, context.time_remaining()))

    async def _stream_one(self, request: pb.ModelInferRequest,
                          timeout_s: float | None) -> AsyncIterator[pb.ModelStreamInferResponse]:
        try:
            model, domain = self.repository.decode(request)
            async for tensors, final in self.repository.infer_stream(model, domain, timeout_s):
                yield pb.ModelStreamInferResponse(infer_response=self.repository.encode(domain, tensors, final))
        except VersusError as exc:  # this request failed; the stream and its other requests go on
            failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            failed.parameters[FINAL_RESPONSE].bool_param = True
            yield pb.ModelStreamInferResponse(error_message=f"{status_for(exc).name}: {exc.message}",
                                              infer_response=failed)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # One request at a time, in order: the device serialises generation anyway, and a client that
        # wants ViT batching across requests sends concurrent ModelInfer calls.
        async for request in request_iterator:
            async for response in self._stream_one(request, context.time_remaining()):
                yield response


def server_version() -> str:
    """The installed ``versus`` distribution's version (ServerMetadata.version)."""
    try:
        return importlib.metadata.version("versus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def oip_binding(models: Sequence[OipModel], server_name: str, http: bool = False) -> ServiceBinding:
    """The binding that registers the protocol's service for ``models`` on a server; with ``http``, the
    same repository is served over REST too (:mod:`services.common.oip_rest`, on the config's http_port)."""
    repository = ModelRepository(server_name, server_version(), models, EXTENSIONS)

    def register(server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(OipServicer(repository), server)

    return ServiceBinding(SERVICE_NAME, register, OipRest(repository) if http else None)
