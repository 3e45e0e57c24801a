"""One server interceptor for every service: auth, request ids, RPC metrics and error mapping.

Servicers raise domain errors (``services.common.errors``); this is the only place that turns them
into gRPC statuses. NotImplementedError (what a generated servicer base raises for an RPC the service
does not override) becomes UNIMPLEMENTED; anything else becomes INTERNAL with a generic message, the
traceback logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common import errors
from services.common.logs import request_id_var
from services.common.metrics import Metrics
from services.common.status import to_status

log = logging.getLogger(__name__)

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


REQUEST_ID_KEY = "x-request-id"
#: A client's request id is echoed in trailers and logs only when it is this short and plain.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


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


def _client_request_id(metadata: tuple[tuple[str, Any], ...]) -> str:
    presented = next((v for k, v in metadata if k == REQUEST_ID_KEY), "")
    return presented if isinstance(presented, str) and _REQUEST_ID.fullmatch(presented) else uuid.uuid4().hex[:16]


def _split(method: str) -> tuple[str, str]:
    _, service, name = method.split("/", 2)
    return service, name


class _Call:
    """Bookkeeping for one RPC: metrics, request id, and the status it ended with."""

    def __init__(self, metrics: Metrics, grpc_type: str, service: str, method: str, request_id: str) -> None:
        self.metrics = metrics
        self.labels = (grpc_type, service, method)
        self.request_id = request_id
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        metrics.started.labels(*self.labels).inc()
        metrics.in_flight.labels(service, method).inc()

    def finish(self) -> None:
        m = self.metrics
        m.handled.labels(*self.labels, self.code.name).inc()
        m.handling_seconds.labels(*self.labels).observe(time.perf_counter() - self.start)
        m.in_flight.labels(*self.labels[1:]).dec()

    async def fail(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        """Abort the RPC with the status and ``google.rpc`` details mapped from ``exc``."""
        status = to_status(exc, self.request_id)
        self.code = status.code
        if isinstance(exc, errors.VersusError):
            # Overload refusals are counted in metrics; logging each one would make a flood costlier.
            level = (logging.ERROR if self.code == grpc.StatusCode.INTERNAL
                     else logging.DEBUG if self.code == grpc.StatusCode.RESOURCE_EXHAUSTED else logging.INFO)
            log.log(level, "rpc failed", extra={"rpc": self.labels[2], "code": self.code.name, "error": exc.message,
                                                "reason": exc.reason})
        else:
            log.error("unhandled exception", exc_info=exc, extra={"rpc": self.labels[2]})
        trailing = (*status.trailing_metadata, (REQUEST_ID_KEY, self.request_id))
        await context.abort(status.code, status.details, trailing_metadata=trailing)

    def cancelled(self, context: grpc.aio.ServicerContext) -> None:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler of the Versus services (not health/reflection)."""

    def __init__(self, metrics: Metrics, token: str = "", max_message_bytes: int = 0) -> None:
        self._metrics = metrics
        self._token = token.encode()
        self._max_bytes = max_message_bytes

    def _authorized(self, metadata: tuple[tuple[str, Any], ...]) -> bool:
        if not self._token:
            return True
        for key, value in metadata:
            if key == "authorization":
                raw = value if isinstance(value, bytes) else str(value).encode()
                scheme, _, presented = raw.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self._token)
        return False

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
        authorized = self._authorized(metadata)
        request_id = _client_request_id(metadata)
        if handler.response_streaming:
            kind = "bidi_stream" if handler.request_streaming else "server_stream"
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            wrapped = self._wrap_stream(behavior, kind, service, method, request_id, authorized)
            factory = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
        else:
            kind = "client_stream" if handler.request_streaming else "unary"
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
            wrapped = self._wrap_unary(behavior, kind, service, method, request_id, authorized)
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
        self, context: grpc.aio.ServicerContext, kind: str, service: str, method: str, request_id: str, authorized: bool
    ) -> AsyncIterator[None]:
        """Everything around one RPC: metrics, request id, auth and the error mapping."""
        call = _Call(self._metrics, kind, service, method, request_id)
        token = request_id_var.set(request_id)
        try:
            if not authorized:
                raise errors.Unauthenticated("missing or invalid bearer token in 'authorization' metadata")
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            yield
        except asyncio.CancelledError:
            call.cancelled(context)
            raise
        except grpc.aio.AbortError:
            call.code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except NotImplementedError:
            await call.fail(context, errors.Unimplemented(f"{service}/{method} is not implemented by this server"))
        except Exception as exc:  # noqa: BLE001 - the one place every error is mapped
            await call.fail(context, exc)
        finally:
            call.finish()
            request_id_var.reset(token)

    def _check_size(self, request: Any) -> None:
        # The transport accepts up to twice the limit so that an oversize request gets a clear
        # INVALID_ARGUMENT here instead of the transport's bare RESOURCE_EXHAUSTED.
        size = request.ByteSize() if self._max_bytes and hasattr(request, "ByteSize") else 0
        if size > self._max_bytes:
            raise errors.InvalidArgument(
                "request", f"message of {size} bytes exceeds the limit of {self._max_bytes} bytes; split it"
            )

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
