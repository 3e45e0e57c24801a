"""The Open Inference Protocol over HTTP/REST (KServe V2's default protocol, what ``tritonclient.http``
speaks), on aiohttp, beside a service's gRPC port.

Routes (``{m}`` = ``/v2/models/<name>[/versions/<version>]``):

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET {m}/ready``: open like the gRPC probes;
  200 when true, 400 when false (the protocol's "4xx means false").
- ``GET /v2``, ``GET {m}``, ``GET {m}/config``, ``GET {m}/stats``, ``GET /v2/models/stats``,
  ``POST {m}/infer``: the same :class:`ModelRepository` as the gRPC servicer (one dataplane: the
  same models, checks, backend, admission, batcher and statistics).

Every non-probe call passes the server's :class:`~services.common.calls.Gate`, the one the gRPC
interceptor uses: bearer token (``Authorization`` header), ``x-request-id`` (echoed as a response
header), the message-size limit (413 beyond it), the ``grpc_server_*`` metrics (``grpc_type="http"``,
``grpc_service="inference.GRPCInferenceService"``, the RPC's name as ``grpc_method``) and the error
mapping. An error answers ``{"error": message, "code": "<gRPC status>", "reason", "violations",
"request_id", ...}`` with the HTTP status of :data:`HTTP_STATUS`. No progress streaming over REST:
an SD3.5 ``infer`` waits for the image (use gRPC's ModelStreamInfer for progress).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from services.common import errors
from services.common.calls import REQUEST_ID_KEY, Gate, MessageTooLarge
from services.common.config import OipServerConfig
from services.common.interceptors import open_rpc
from services.common.logs import request_id_var
from services.common.metrics import Metrics
from services.common.oip import ModelRepository
from services.common.oip_json import HEADER_LENGTH, infer_body, message_json, parse_infer
from services.common.status import GENERIC_INTERNAL_MESSAGE

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
#: gRPC status → HTTP status (as grpc-gateway maps them; 499 is "client closed request").
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.ABORTED: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
#: Longest request line and header accepted: a 20,000-character model name reaches the handler and gets
#: NOT_FOUND, as over gRPC, instead of the parser's bare 400.
MAX_LINE = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")


def error_response(exc: BaseException, code: grpc.StatusCode, request_id: str) -> web.Response:
    """The protocol's error body (``{"error": ...}``) with the ``google.rpc`` facts beside it."""
    body: dict[str, Any] = {"code": code.name, "request_id": request_id}
    headers = {}
    if isinstance(exc, errors.VersusError):
        body |= {"error": exc.message, "reason": exc.reason}
        if exc.violations:
            body["violations"] = [{"field": f, "description": d} for f, d in exc.violations]
        if exc.resource_type or exc.resource_name:
            body["resource"] = {"type": exc.resource_type, "name": exc.resource_name}
        if exc.retry_after_s is not None:
            body["retry_after_s"] = exc.retry_after_s
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    else:
        body |= {"error": f"{GENERIC_INTERNAL_MESSAGE} (request id {request_id})", "reason": "INTERNAL"}
    status = 413 if isinstance(exc, MessageTooLarge) else HTTP_STATUS.get(code, 500)
    response = _json(body, status)
    response.headers.update(headers)
    return response


class OipRest:
    """The REST endpoint of one server's model repository; started and stopped by its VersusServer."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        self.gate: Gate | None = None
        self._runner: web.AppRunner | None = None

    # -- the shared guard ---------------------------------------------------------------------------
    def _guarded(self, rpc: str, handler: Handler) -> Handler:
        probe = open_rpc(f"/{SERVICE}/{rpc}")

        async def handle(request: web.Request) -> web.StreamResponse:
            assert self.gate is not None
            request_id = self.gate.request_id(request.headers.get(REQUEST_ID_KEY))
            if probe:
                response = await handler(request)
            else:
                call = self.gate.call("http", SERVICE, rpc, request_id)
                token = request_id_var.set(request_id)
                try:
                    self.gate.check_authorized(request.headers.get("Authorization"))
                    response = await handler(request)
                except asyncio.CancelledError:
                    call.cancelled(expired=False)
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped like the gRPC interceptor maps it
                    mapped = call.error(exc)
                    response = error_response(mapped, call.code, request_id)
                finally:
                    call.finish()
                    request_id_var.reset(token)
            response.headers[REQUEST_ID_KEY] = request_id
            return response

        return handle

    async def _body(self, request: web.Request) -> bytes:
        assert self.gate is not None
        if request.content_length is not None:
            self.gate.check_size(request.content_length)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:  # a chunked body over the limit
            raise MessageTooLarge("request", f"body exceeds the limit of {self.gate.max_message_bytes} bytes; "
                                  "split it") from None

    # -- routes ---------------------------------------------------------------------------------------
    @staticmethod
    def _model(request: web.Request) -> tuple[str, str]:
        return request.match_info["name"], request.match_info.get("version", "")

    async def _live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self.repository.server_ready()
        return _json({"ready": ready}, 200 if ready else 400)

    async def _model_ready(self, request: web.Request) -> web.Response:
        ready = self.repository.model_ready(*self._model(request))
        return _json({"name": self._model(request)[0][:64], "ready": ready}, 200 if ready else 400)

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return _json(message_json(self.repository.server_metadata()))

    async def _model_metadata(self, request: web.Request) -> web.Response:
        return _json(message_json(self.repository.model_metadata(*self._model(request))))

    async def _config(self, request: web.Request) -> web.Response:
        return _json(message_json(self.repository.model_config(*self._model(request)).config))

    async def _stats(self, request: web.Request) -> web.Response:
        name, version = self._model(request) if "name" in request.match_info else ("", "")
        return _json(message_json(self.repository.statistics(name, version)))

    async def _infer(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        rest = parse_infer(body, request.headers.get(HEADER_LENGTH), *self._model(request))
        model, domain = self.repository.decode(rest.request)
        tensors = await self.repository.infer(model, domain, rest.timeout_s)
        payload, header_length = infer_body(self.repository.encode(domain, tensors), rest)
        if header_length is None:
            return web.Response(body=payload, content_type="application/json")
        response = web.Response(body=payload, content_type="application/octet-stream")
        response.headers[HEADER_LENGTH] = str(header_length)
        return response

    async def _not_found(self, request: web.Request) -> web.Response:
        raise errors.NotFound(f"no such route: {request.method} {errors.quote(request.path)}",
                              resource_type="route", resource_name=request.path)

    def app(self, max_body: int) -> web.Application:
        app = web.Application(client_max_size=max_body)
        g = self._guarded
        app.router.add_get("/v2/health/live", g("ServerLive", self._live))
        app.router.add_get("/v2/health/ready", g("ServerReady", self._ready))
        app.router.add_get("/v2", g("ServerMetadata", self._server_metadata))
        app.router.add_get("/v2/models/stats", g("ModelStatistics", self._stats))
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            app.router.add_get(prefix, g("ModelMetadata", self._model_metadata))
            app.router.add_get(prefix + "/ready", g("ModelReady", self._model_ready))
            app.router.add_get(prefix + "/config", g("ModelConfig", self._config))
            app.router.add_get(prefix + "/stats", g("ModelStatistics", self._stats))
            app.router.add_post(prefix + "/infer", g("ModelInfer", self._infer))
        app.router.add_route("*", "/{path:.*}", g("Unrouted", self._not_found))
        return app

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self, config: OipServerConfig, metrics: Metrics) -> int:
        """Listen on ``config.http_port`` (0: a free port); the bound port."""
        self.gate = Gate(metrics, config.resolved_token(), config.max_message_bytes)
        self._runner = web.AppRunner(self.app(config.max_message_bytes), access_log=None,
                                     shutdown_timeout=config.grace_s, max_line_size=MAX_LINE, max_field_size=MAX_LINE)
        await self._runner.setup()
        site = web.TCPSite(self._runner, config.host.strip("[]") or None, config.http_port,
                           ssl_context=server_ssl(config), reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise errors.ConfigError(f"cannot bind {config.label('http_port')} {config.http_port}: {exc}") from exc
        port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        log.info("OIP REST listening", extra={"http_port": port})
        return port

    async def stop(self) -> None:
        """Refuse new requests; in-flight ones get the server's grace period."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def server_ssl(config: OipServerConfig) -> ssl.SSLContext | None:
    """TLS (mTLS with a client CA) from the same files as the gRPC port, or None for plaintext."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        context.load_verify_locations(config.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
