"""The one registry of Versus services: name, config class, backend, servicer, server factory and proto.

The CLI (``versus serve``), the server bootstrap, the generated configuration docs and the deploy and
observability tests read this table; nothing else keeps a list of services. Entries name their code by
dotted path and are imported only when used, so the runtime layer imports no service and ``versus serve
ranker`` never loads torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from services.common.errors import ConfigError


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ServiceSpec:
    """One service: where its pieces live (``module:attr``) and what it needs installed."""

    name: str
    config: str  # the typed config class (ServerConfig subclass)
    backend: str  # the transport-free data plane
    servicer: str  # protobuf <-> domain types
    server: str  # create_server(config) -> (server, port)
    proto: str  # the gRPC service's full name
    extra: str  # the package extra that installs what it runs (`pip install 'versus[EXTRA]'`)
    model_server: bool  # serves a model (GPU pods, queue-depth autoscaling, OIP)
    summary: str

    def config_class(self) -> type:
        return _load(self.config)

    def create_server(self) -> Any:
        return _load(self.server)


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("vit", "services.vit.config:VitConfig", "services.vit.backend:VitBackend",
                "services.vit.servicer:VitServicer", "services.vit.server:create_server",
                "versus.vit.v1.VitService", "vit", True,
                "ViT image classification and embeddings (torch, ONNX Runtime or Triton)"),
    ServiceSpec("sd35", "services.sd35.config:Sd35Config", "services.sd35.backend:Sd35Backend",
                "services.sd35.servicer:Sd35Servicer", "services.sd35.server:create_server",
                "versus.sd35.v1.Sd35Service", "sd35", True,
                "Stable Diffusion 3.5 text-to-image (Large, Large Turbo, Medium)"),
    ServiceSpec("ranker", "services.ranker.config:RankerConfig", "services.ranker.backend:RankerBackend",
                "services.ranker.servicer:RankerServicer", "services.ranker.server:create_server",
                "versus.ranker.v1.RankerService", "ranker", False,
                "catalog, 0-100 scores and Bradley-Terry ratings over the match graph"),
    ServiceSpec("gateway", "services.gateway.config:GatewayConfig", "services.gateway.backend:GatewayBackend",
                "services.gateway.servicer:GatewayServicer", "services.gateway.server:create_server",
                "versus.gateway.v1.GatewayService", "gateway", False,
                "evidence-backed comparisons and their report pages"),
)

BY_NAME = {s.name: s for s in SERVICES}
NAMES = tuple(BY_NAME)
MODEL_SERVERS = tuple(s.name for s in SERVICES if s.model_server)


def spec(name: str) -> ServiceSpec:
    """The entry for ``name``, or a ConfigError that lists the services there are."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown service {name!r}; choose from {', '.join(NAMES)}") from None
