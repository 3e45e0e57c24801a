"""Channels to the model services and the ranker: round-robin over every address a target resolves
to, keepalive, retries for idempotent methods, TLS and tokens from config, the caller's trace context
(W3C ``traceparent``, when tracing is on) on every call, and one error type that carries the
downstream's structured details."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from versus.ranker.v1 import ranker_pb2_grpc
from versus.sd35.v1 import sd35_pb2_grpc
from versus.vit.v1 import vit_pb2_grpc

from services.common import registry, tracing
from services.common.client import ErrorDetails, error_details
from services.gateway.config import SD35_VARIANTS, GatewayConfig, ServedBy

#: Methods safe to retry on UNAVAILABLE (no side effects, or idempotent by key).
IDEMPOTENT = {
    "versus.vit.v1.VitService": ("Classify", "Embed", "GetModelInfo", "ListHeads"),
    "versus.sd35.v1.Sd35Service": ("GetModelInfo", "ListAdapters"),
    "versus.ranker.v1.RankerService": ("Score", "GetLeaderboard", "GetModel", "ListModels", "RecordMatch"),
}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def service_config() -> str:
    """round_robin over all resolved addresses (a headless Service's pods) + retries for idempotent calls."""
    names = [{"service": svc, "method": m} for svc, methods in IDEMPOTENT.items() for m in methods]
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": names,
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
        }],
    })


def channel_options(server_name: str = "") -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


class DownstreamError(Exception):
    """A downstream call failed; ``details`` is what its google.rpc.Status said."""

    def __init__(self, component: str, details: ErrorDetails) -> None:
        super().__init__(f"{component}: {details.describe()}")
        self.component = component
        self.details = details


class NotConfigured(DownstreamError):
    """No target is configured for this component."""

    def __init__(self, component: str) -> None:
        super().__init__(component, ErrorDetails(grpc.StatusCode.UNAVAILABLE,
                                                 f"no {component} target configured", reason="NOT_CONFIGURED"))


@dataclass
class Target:
    """One downstream: its channel and stub."""

    component: str
    channel: grpc.aio.Channel
    stub: Any


#: The services the gateway calls: every registered service but itself.
DOWNSTREAMS = tuple(n for n in registry.NAMES if n != "gateway")


class Downstream:
    """The gateway's clients. Create inside the event loop; ``close()`` on shutdown."""

    def __init__(self, config: GatewayConfig) -> None:
        self._tokens = {c: config.resolved_downstream_token(c) for c in DOWNSTREAMS}
        self._credentials = self._tls(config)
        self._server_name = config.downstream_server_name
        self.targets: dict[str, Target] = {}
        self._add("vit", config.vit, vit_pb2_grpc.VitServiceStub)
        self._add("sd35", config.sd35, sd35_pb2_grpc.Sd35ServiceStub)
        for variant, target in config.variant_targets().items():  # a deployment per SD3.5 variant
            self._add(f"sd35-{variant}", target, sd35_pb2_grpc.Sd35ServiceStub)
        self._add("ranker", config.ranker, ranker_pb2_grpc.RankerServiceStub)
        for precision, target in config.precision_targets().items():
            self._add(f"vit-{precision}", target, vit_pb2_grpc.VitServiceStub)

    @staticmethod
    def _tls(config: GatewayConfig) -> grpc.ChannelCredentials | None:
        if not config.downstream_tls_ca:
            return None

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(config.downstream_tls_ca), read(config.downstream_tls_key),
                                            read(config.downstream_tls_cert))

    def _add(self, component: str, target: str, stub_cls: Any) -> None:
        if not target:
            return
        options = channel_options(self._server_name)
        traced = tracing.client_interceptors()  # a CLIENT span per call, its context in the metadata
        channel = (grpc.aio.secure_channel(target, self._credentials, options=options, interceptors=traced)
                   if self._credentials else grpc.aio.insecure_channel(target, options=options, interceptors=traced))
        self.targets[component] = Target(component, channel, stub_cls(channel))

    def has(self, component: str) -> bool:
        return component in self.targets

    def component(self, by: ServedBy) -> str:
        """The target that serves ``by``: an SD3.5 variant's own deployment when it has one, else its service's."""
        own = f"{by.service}-{by.variant}" if by.variant else ""
        return own if own in self.targets else by.service

    def serves(self, by: ServedBy) -> bool:
        return self.component(by) in self.targets

    def sd35_components(self) -> list[str]:
        """The SD3.5 targets some variant is routed to: a variant's own ("sd35-large" …), else the shared "sd35"."""
        variants = (ServedBy("sd35", v) for v in SD35_VARIANTS)
        return list(dict.fromkeys(self.component(by) for by in variants if self.serves(by)))

    def metadata(self, component: str, request_id: str = "") -> tuple[tuple[str, str], ...]:
        md: list[tuple[str, str]] = []
        token = self._tokens.get(component.split("-")[0], "")
        if token:
            md.append(("authorization", f"Bearer {token}"))
        if request_id:
            md.append(("x-request-id", request_id))
        return tuple(md)

    async def call(self, component: str, method: str, request: Any, timeout_s: float) -> Any:
        """One unary call; failures raise :class:`DownstreamError` with the structured details."""
        target = self.targets.get(component)
        if target is None:
            raise NotConfigured(component)
        if timeout_s <= 0:
            raise DownstreamError(component, ErrorDetails(grpc.StatusCode.DEADLINE_EXCEEDED,
                                                          "no time left in the comparison's budget",
                                                          reason="BUDGET_EXHAUSTED"))
        try:
            return await getattr(target.stub, method)(request, timeout=timeout_s, metadata=self.metadata(component))
        except grpc.aio.AioRpcError as err:
            raise DownstreamError(component, error_details(err)) from None

    async def stream(self, component: str, method: str, request: Any, timeout_s: float) -> list[Any]:
        """A server-streaming call, collected (the gateway needs the final event)."""
        target = self.targets.get(component)
        if target is None:
            raise NotConfigured(component)
        try:
            return [event async for event in getattr(target.stub, method)(
                request, timeout=max(0.001, timeout_s), metadata=self.metadata(component))]
        except grpc.aio.AioRpcError as err:
            raise DownstreamError(component, error_details(err)) from None

    async def close(self) -> None:
        for target in self.targets.values():
            await target.channel.close()
