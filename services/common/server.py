"""Server bootstrap shared by every service: one place for gRPC options, TLS, health, reflection,
metrics, and the start/drain/stop lifecycle.

A service's ``create_server(config)`` builds its backend and servicers and calls :func:`build_server`;
the returned :class:`VersusServer` is started with ``await server.start()`` (tests, port 0) or run
until SIGTERM with ``await server.serve()`` (``versus serve``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common import errors, tracing
from services.common.config import ServerConfig
from services.common.interceptors import ServiceInterceptor, open_rpc
from services.common.metrics import Metrics

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Backend(Protocol):
    """What a service's model side offers the runtime."""

    async def start(self) -> None:
        """Load weights and warm up (off the event loop). Raise to fail start-up."""

    async def close(self) -> None:
        """Release workers and memory after the gRPC server has drained."""


class Listener(Protocol):
    """A service on another transport beside the gRPC port (the OIP's REST endpoint)."""

    async def start(self, config: Any, metrics: Metrics) -> int:
        """Listen; the bound port."""

    async def stop(self) -> None:
        """Refuse new calls and let in-flight ones finish."""


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to register: its full name and the generated ``add_..._to_server``; ``listener``
    serves it on another transport too, started and stopped with the server."""

    name: str
    register: Callable[[grpc.aio.Server], None]
    listener: Listener | None = None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {path}: {exc}") from exc


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when a client CA is set) credentials, or None for plaintext."""
    if not config.tls_cert:
        return None
    client_ca = _read(config.tls_client_ca) if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key), _read(config.tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Channel arguments: message limits, keepalive, connection age (so clients rebalance)."""
    options = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Twice the limit: the interceptor answers INVALID_ARGUMENT up to there (see ServiceInterceptor).
        ("grpc.max_receive_message_length", min(2 * config.max_message_bytes, 2**31 - 1)),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]
    if config.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000)),
        ]
    return options


class VersusServer:
    """A gRPC server with its health, metrics and backend, and their lifecycle."""

    def __init__(
        self,
        config: ServerConfig,
        server: grpc.aio.Server,
        port: int,
        health: HealthServicer,
        metrics: Metrics,
        backend: Backend,
        service_names: Sequence[str],
        traces: tracing.Tracing | None = None,
        listeners: Sequence[Listener] = (),
    ) -> None:
        self.config = config
        self.listeners = tuple(listeners)
        self.http_port = -1  # the REST listener's port once started
        self.tracing = traces  # None unless the OTEL_* variables turn tracing on
        self.grpc_server = server
        self.port = port
        self.health = health
        self.metrics = metrics
        self.backend = backend
        self.service_names = tuple(service_names)
        self.metrics_port = -1
        self._stopping: asyncio.Event | None = None
        self._stopped = False
        self._shutdown_task: asyncio.Task[None] | None = None

    async def set_serving(self, serving: bool) -> None:
        """Flip overall and per-service health; once stopping has begun nothing reports SERVING again."""
        if serving and self._stopped:
            return
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def start(self) -> None:
        """Start serving health (NOT_SERVING) at once, load and warm the model, then SERVING."""
        self._stopping = asyncio.Event()
        await self.set_serving(False)
        await self.grpc_server.start()
        try:
            for listener in self.listeners:
                self.http_port = await listener.start(self.config, self.metrics)
        except BaseException:
            await self.stop(grace=0, drain_delay=0)
            raise
        self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        log.info("server listening; loading model", extra={"port": self.port, "services": self.service_names})
        self.backend.on_readiness = self.set_serving  # a backend whose readiness changes later (a remote engine)
        try:
            await self.backend.start()
        except BaseException:
            await self.stop(grace=0, drain_delay=0)
            raise
        await self.set_serving(True)
        log.info("serving", extra={"port": self.port})

    async def stop(self, grace: float | None = None, drain_delay: float | None = None) -> None:
        """NOT_SERVING, keep serving for ``drain_delay`` s, refuse new RPCs, let in-flight ones
        finish for up to ``grace`` s, then close the backend and the metrics endpoint."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.grace_s if grace is None else grace
        drain_delay = self.config.drain_delay_s if drain_delay is None else drain_delay
        await self.set_serving(False)
        log.info("draining", extra={"grace_s": grace, "drain_delay_s": drain_delay})
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        await asyncio.gather(self.grpc_server.stop(grace), *(listener.stop() for listener in self.listeners))
        await self.backend.close()
        self.metrics.close()
        tracing.release(self.tracing)  # exports the spans still buffered
        self.tracing = None
        if self._stopping is not None:
            self._stopping.set()
        log.info("stopped")

    def request_stop(self) -> None:
        """Begin the graceful stop (idempotent); call on the server's event loop."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self.stop())

    async def serve(self, install_signal_handlers: bool = True) -> None:
        """Start, then run until SIGTERM/SIGINT (or :meth:`request_stop`), then drain and stop.

        Without ``install_signal_handlers`` (the loop is not on the main thread), the caller forwards
        signals with ``loop.call_soon_threadsafe(server.request_stop)``.
        """
        loop = asyncio.get_running_loop()
        await self.start()
        assert self._stopping is not None
        if self.config.port_file:
            with open(self.config.port_file, "w", encoding="utf-8") as fh:
                json.dump({"port": self.port, "metrics_port": self.metrics_port, "http_port": self.http_port,
                           "pid": os.getpid()}, fh)
        def on_signal(signum: int) -> None:
            log.info("signal received; shutting down", extra={"signal": signal.Signals(signum).name})
            self.request_stop()

        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, on_signal, signum)
        await self._stopping.wait()
        if self._shutdown_task is not None:
            await self._shutdown_task


def build_server(
    config: ServerConfig,
    bindings: Sequence[ServiceBinding],
    backend: Backend,
    metrics: Metrics,
) -> tuple[VersusServer, int]:
    """Create the grpc.aio server with the shared interceptor, health, reflection and TLS; bind it.

    Must be called with an event loop running (grpc.aio binds to it). Tracing starts here when the
    ``OTEL_*`` variables ask for it; its interceptor comes first, so the RPC's span is current in ours.
    """
    traces = tracing.acquire(f"versus-{config.ENV_PREFIX.lower()}")
    interceptors = [ServiceInterceptor(metrics, config.resolved_token(), config.max_message_bytes)]
    server = grpc.aio.server(
        interceptors=[traces.server_interceptor(untraced=open_rpc), *interceptors] if traces else interceptors,
        options=grpc_options(config),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    for binding in bindings:
        binding.register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [b.name for b in bindings]
    if config.reflection:
        reflection.enable_server_reflection([*names, "grpc.health.v1.Health", reflection.SERVICE_NAME], server)
    address = f"{config.host}:{config.port}"
    credentials = server_credentials(config)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        tracing.release(traces)
        raise errors.ConfigError(f"cannot bind {address}: {exc}") from exc
    if port == 0:
        tracing.release(traces)
        raise errors.ConfigError(f"cannot bind {address}")
    listeners = [b.listener for b in bindings if b.listener is not None]
    return VersusServer(config, server, port, health, metrics, backend, names, traces, listeners), port


def build_service_server(
    config: ServerConfig,
    backend_cls: Callable[[ServerConfig, Metrics], Backend],
    servicer_cls: Callable[[Backend], object],
    add_to_server: Callable[[object, grpc.aio.Server], None],
    service_name: str,
    metrics: Metrics | None = None,
    extra: Callable[[Backend], Sequence[ServiceBinding]] = lambda backend: (),
) -> tuple[VersusServer, int]:
    """The usual shape of a service: one backend, one servicer, one gRPC service (plus ``extra(backend)``
    services on the same port, such as the Open Inference Protocol)."""
    metrics = metrics or Metrics()
    backend = backend_cls(config, metrics)
    servicer = servicer_cls(backend)
    binding = ServiceBinding(service_name, lambda server: add_to_server(servicer, server))
    return build_server(config, [binding, *extra(backend)], backend, metrics)
