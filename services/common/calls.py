"""What happens around every call, whatever the transport: the bearer token, the request id, the
message-size limit, the RPC metrics, and which domain error a failure is. No gRPC or HTTP here.

The gRPC interceptor (:mod:`services.common.interceptors`) and the Open Inference Protocol's REST
handler (:mod:`services.common.oip_rest`) both go through one :class:`Gate`, so a call gets the same
checks, the same ``grpc_server_*`` metrics and the same error mapping on either transport.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

import grpc

from services.common import errors
from services.common.metrics import Metrics
from services.common.status import status_for

log = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
#: A client's request id is echoed in trailers and logs only when it is this short and plain.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class MessageTooLarge(errors.InvalidArgument):
    """A request message over the server's limit (INVALID_ARGUMENT over gRPC, 413 over HTTP)."""

    reason = "INVALID_ARGUMENT"


class Call:
    """Bookkeeping for one call: metrics, request id, and the status it ended with."""

    def __init__(self, metrics: Metrics, kind: str, service: str, method: str, request_id: str) -> None:
        self.metrics = metrics
        self.labels = (kind, service, method)
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

    def error(self, exc: BaseException) -> BaseException:
        """The error the caller gets for ``exc`` (recorded as this call's status, and logged).

        NotImplementedError (a generated servicer base's answer for an RPC the service does not
        override) is UNIMPLEMENTED; a domain error keeps its own status; anything else is a bug:
        INTERNAL, with the traceback in the log only.
        """
        if isinstance(exc, NotImplementedError):
            exc = errors.Unimplemented(f"{self.labels[1]}/{self.labels[2]} is not implemented by this server")
        self.code = status_for(exc)
        if isinstance(exc, errors.VersusError):
            # Overload refusals are counted in metrics; logging each one would make a flood costlier.
            level = (logging.ERROR if self.code == grpc.StatusCode.INTERNAL
                     else logging.DEBUG if self.code == grpc.StatusCode.RESOURCE_EXHAUSTED else logging.INFO)
            log.log(level, "rpc failed", extra={"rpc": self.labels[2], "code": self.code.name, "error": exc.message,
                                                "reason": exc.reason})
        else:
            log.error("unhandled exception", exc_info=exc, extra={"rpc": self.labels[2]})
        return exc

    def cancelled(self, expired: bool) -> None:
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


class Gate:
    """One server's call policy: its token, its message-size limit and its metrics."""

    def __init__(self, metrics: Metrics, token: str = "", max_message_bytes: int = 0) -> None:
        self.metrics = metrics
        self._token = token.encode()
        self.max_message_bytes = max_message_bytes

    def authorized(self, authorization: str | bytes | None) -> bool:
        """Whether the ``authorization`` value (metadata or header; None when absent) is ``Bearer <token>``."""
        if not self._token:
            return True
        if authorization is None:
            return False
        raw = authorization if isinstance(authorization, bytes) else str(authorization).encode()
        scheme, _, presented = raw.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self._token)

    def check_authorized(self, authorization: str | bytes | None) -> None:
        if not self.authorized(authorization):
            raise errors.Unauthenticated("missing or invalid bearer token in 'authorization'")

    @staticmethod
    def request_id(presented: object) -> str:
        """The client's request id when it is short and plain, else a fresh one."""
        return presented if isinstance(presented, str) and _REQUEST_ID.fullmatch(presented) else uuid.uuid4().hex[:16]

    def check_size(self, size: int) -> None:
        """INVALID_ARGUMENT for a request message over the limit."""
        if self.max_message_bytes and size > self.max_message_bytes:
            raise MessageTooLarge(
                "request", f"message of {size} bytes exceeds the limit of {self.max_message_bytes} bytes; split it"
            )

    def call(self, kind: str, service: str, method: str, request_id: str) -> Call:
        return Call(self.metrics, kind, service, method, request_id)
