"""The gateway's side of the runtime contract: the comparison engine plus the report pages (HTTP) on
the same event loop. Nothing heavy to load: downstream channels connect lazily, and the gateway is
SERVING even while a model service is down (its evidence is then marked unavailable)."""

from __future__ import annotations

import logging
from typing import Any

from services.common.backend import Capability, ModelInfo, ServiceBackend
from services.common.metrics import Metrics
from services.gateway.config import GatewayConfig
from services.gateway.engine import Gateway

log = logging.getLogger(__name__)

CAPABILITIES = (
    Capability("compare", "Evidence-backed comparisons",
               "Catalog facts with primary sources, live probes of the served models, cross-model quality, "
               "head-to-head with the ViT judge, scores and verdict."),
    Capability("reports", "Reports", "Markdown and self-contained HTML reports; browsable pages and JSON."),
)


class GatewayBackend(ServiceBackend):
    def __init__(self, config: GatewayConfig, metrics: Metrics) -> None:
        super().__init__("gateway", metrics)
        self.config = config
        self.gateway = Gateway(config, metrics)
        self.http_port = -1
        self._web: Any = None

    def load(self) -> None:
        """Nothing to load (the engine connects on the event loop in :meth:`started`)."""

    async def started(self) -> None:
        await self.gateway.start()
        if self.config.http_port >= 0:
            from services.gateway.pages.web import create_web_app, start_web

            app = create_web_app(self.gateway, token=self.config.resolved_token())
            if self.gateway.routes:  # the routes' OIP REST front door, behind the pages' token
                from services.gateway.routes.rest import add_rest_front_door

                add_rest_front_door(app, self.gateway.routes, self.config.call_timeout_s)
            self._web, self.http_port = await start_web(app, self.config.http_host, self.config.http_port,
                                                        ssl_context=self._pages_tls())
            log.info("report pages listening", extra={"http_port": self.http_port})

    def _pages_tls(self) -> Any:
        """The gRPC port's certificate also serves the pages (HTTPS) when TLS is configured."""
        if not self.config.tls_cert:
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    async def stopping(self) -> None:
        if self._web is not None:
            from services.gateway.pages.web import stop_web

            await stop_web(self._web)
            self._web = None
        await self.gateway.close()

    def describe(self) -> list[ModelInfo]:
        targets = {name: t.channel.get_state().name for name, t in self.gateway.downstream.targets.items()}
        return [ModelInfo(id="versus-gateway", family="gateway", variant="v1", parameters=0, precision="",
                          device="cpu", backend="grpc", capabilities=CAPABILITIES,
                          properties={f"target_{k}": v for k, v in targets.items()})]
