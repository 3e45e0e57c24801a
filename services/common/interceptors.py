"""One server interceptor for every service: auth, request ids, RPC metrics and error mapping.

Servicers raise domain errors (``services.common.errors``); this is the only place that turns them
into gRPC statuses. The policy itself (token, request id, size limit, metrics, which error a failure
is: NotImplementedError, what a generated servicer base raises for an RPC the service does not
override, becomes UNIMPLEMENTED; anything else not a domain error becomes INTERNAL with a generic
message, the traceback logged) is :class:`services.common.calls.Gate`, shared with the OIP's REST
handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common import errors
from services.common.calls import REQUEST_ID_KEY, Call, Gate
from services.common.logs import request_id_var
from services.common.metrics import Metrics
from services.common.status import to_status

#: Services that stay open without a token and are not wrapped (Kubernetes probes, grpcurl).
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

#: Methods open like health: the Open Inference Protocol's liveness and readiness probes.
OPEN_METHODS = frozenset(
    f"/inference.GRPCInferenceService/{name}" for name in ("ServerLive", "ServerReady", "ModelReady")
)



def open_rpc(method: str) -> bool:
    """Whether ``/service/Method`` is a probe or reflection RPC: open without a token, not wrapped, not traced."""
    return method in OPEN_METHODS or _split(method)[0] in OPEN_SERVICES


class _Undecodable:
    """Stands in for a request message the transport could not parse (bad bytes, invalid UTF-8)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so a malformed message reaches the handler as :class:`_Undecodable`
    (and becomes INVALID_ARGUMENT with details) instead of gRPC's bare UNKNOWN/INTERNAL."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others on hostile bytes
            return _Undecodable(f"{type(exc).__name__}: {str(exc)[:120]}")

    return deserialize


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument("request", f"not a valid protobuf message ({request.reason})")
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _metadata_value(metadata: tuple[tuple[str, Any], ...], key: str) -> Any:
    return next((v for k, v in metadata if k == key), None)


def _split(method: str) -> tuple[str, str]:
    _, service, name = method.split("/", 2)
    return service, name


async def _abort(call: Call, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Abort the RPC with the status and ``google.rpc`` details mapped from ``exc``."""
    status = to_status(call.error(exc), call.request_id)
    trailing = (*status.trailing_metadata, (REQUEST_ID_KEY, call.request_id))
    await context.abort(status.code, status.details, trailing_metadata=trailing)


def _cancelled(call: Call, context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    call.cancelled(expired=remaining is not None and remaining <= 0)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler of the Versus services (not health/reflection)."""

    def __init__(self, metrics: Metrics, token: str = "", max_message_bytes: int = 0) -> None:
        self.gate = Gate(metrics, token, max_message_bytes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        if open_rpc(details.method):
            return handler
        service, method = _split(details.method)
        metadata = tuple(details.invocation_metadata or ())
        authorization = _metadata_value(metadata, "authorization")
        request_id = self.gate.request_id(_metadata_value(metadata, REQUEST_ID_KEY))
        if handler.response_streaming:
            kind = "bidi_stream" if handler.request_streaming else "server_stream"
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            wrapped = self._wrap_stream(behavior, kind, service, method, request_id, authorization)
            factory = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
        else:
            kind = "client_stream" if handler.request_streaming else "unary"
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
            wrapped = self._wrap_unary(behavior, kind, service, method, request_id, authorization)
            factory = (
                grpc.stream_unary_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_unary_rpc_method_handler
            )
        return factory(
            wrapped,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    @contextlib.asynccontextmanager
    async def _guard(
        self, context: grpc.aio.ServicerContext, kind: str, service: str, method: str, request_id: str,
        authorization: Any,
    ) -> AsyncIterator[None]:
        """Everything around one RPC: metrics, request id, auth and the error mapping."""
        call = self.gate.call(kind, service, method, request_id)
        token = request_id_var.set(request_id)
        try:
            self.gate.check_authorized(authorization)
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            yield
        except asyncio.CancelledError:
            _cancelled(call, context)
            raise
        except grpc.aio.AbortError:
            call.code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:  # noqa: BLE001 - the one place every error is mapped (NotImplementedError too)
            await _abort(call, context, exc)
        finally:
            call.finish()
            request_id_var.reset(token)

    def _check_size(self, request: Any) -> None:
        # The transport accepts up to twice the limit so that an oversize request gets a clear
        # INVALID_ARGUMENT here instead of the transport's bare RESOURCE_EXHAUSTED.
        if self.gate.max_message_bytes and hasattr(request, "ByteSize"):
            self.gate.check_size(request.ByteSize())

    def _wrap_unary(self, behavior: Any, kind: str, *labels: Any) -> Any:
        streaming = kind == "client_stream"

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._guard(context, kind, *labels):
                if streaming:
                    return await behavior(_decoded_stream(request), context)
                self._check_size(_decoded(request))
                return await behavior(request, context)

        return wrapper

    def _wrap_stream(self, behavior: Any, kind: str, *labels: Any) -> Any:
        streaming = kind == "bidi_stream"

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._guard(context, kind, *labels):
                request = _decoded_stream(request) if streaming else _decoded(request)
                async for response in behavior(request, context):
                    yield response

        return wrapper
