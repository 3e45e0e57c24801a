"""``create_server(config) -> (server, port)`` for the ViT service."""

from __future__ import annotations

from services.common.metrics import Metrics
from services.common.server import ServiceBinding, VersusServer, build_server
from services.vit.backend import VitBackend
from services.vit.config import VitConfig
from services.vit.servicer import VitServicer
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

SERVICE_NAME = vit_pb2.DESCRIPTOR.services_by_name["VitService"].full_name


def create_server(config: VitConfig) -> tuple[VersusServer, int]:
    """Build (not start) the ViT server; call with an event loop running."""
    metrics = Metrics()
    backend = VitBackend(config, metrics)
    servicer = VitServicer(backend)
    binding = ServiceBinding(SERVICE_NAME, lambda s: vit_pb2_grpc.add_VitServiceServicer_to_server(servicer, s))
    return build_server(config, [binding], backend, metrics)
