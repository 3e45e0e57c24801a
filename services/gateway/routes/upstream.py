"""One deployment as a route forwards to it: a channel that carries ModelInfer as raw bytes both ways (no
decoding, no re-encoding), round-robin over the deployment's addresses, its token and TLS, and the caller's trace
context."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
from tritonclient.grpc import service_pb2_grpc

from services.common import tracing
from services.gateway.deployments import DeploymentSpec
from services.gateway.oip_client import deployment_channel
from services.gateway.routes import wire

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Outcome:
    """One side's answer to one request: "OK" and the reply's bytes, or the status and its details."""

    status: str
    latency_s: float
    reply: bytes = b""
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    trailing: tuple[tuple[str, str | bytes], ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "OK"


class Upstream:
    """A deployment's channel; create on the event loop, ``close()`` at shutdown."""

    def __init__(self, spec: DeploymentSpec) -> None:
        self.spec = spec
        self.channel = deployment_channel(spec, tracing.client_interceptors())
        # No serializers: the request and the reply stay the bytes they are on the wire.
        self._infer = self.channel.unary_unary(MODEL_INFER)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        token = spec.token()
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def close(self) -> None:
        await self.channel.close()

    async def infer(self, raw: bytes, timeout_s: float, request_id: str = "") -> Outcome:
        """Forward the client's bytes with this deployment's model name and version; never raises for a status."""
        request = wire.rewrite(raw, self.spec.model, self.spec.version)
        metadata = (*self.metadata, ("x-request-id", request_id)) if request_id else self.metadata
        started = time.perf_counter()
        try:
            reply = await self._infer(request, timeout=max(0.001, timeout_s), metadata=metadata)
        except grpc.aio.AioRpcError as err:
            trailing = tuple((k, v) for k, v in (err.trailing_metadata() or ()) if k == "grpc-status-details-bin")
            return Outcome(err.code().name, time.perf_counter() - started, code=err.code(),
                           details=err.details() or "", trailing=trailing)
        return Outcome("OK", time.perf_counter() - started, reply)
