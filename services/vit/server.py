"""``create_server(config) -> (server, port)`` for the vit service."""

from __future__ import annotations

from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.oip_servicer import oip_binding
from services.common.server import VersusServer, build_service_server
from services.vit.backend import VitBackend
from services.vit.config import VitConfig
from services.vit.oip import oip_models
from services.vit.servicer import VitServicer

SERVICE_NAME = vit_pb2.DESCRIPTOR.services_by_name["VitService"].full_name


def create_server(config: VitConfig) -> tuple[VersusServer, int]:
    """Build (not start) the vit server: the native API and the Open Inference Protocol on one port; call
    with an event loop running. With a remote engine (Triton), health follows the remote model's readiness
    through the backend's ``on_readiness``."""
    return build_service_server(config, VitBackend, VitServicer, vit_pb2_grpc.add_VitServiceServicer_to_server,
                                SERVICE_NAME, extra=lambda backend: [oip_binding(oip_models(backend), "versus-vit",
                                                                      http=config.http_port >= 0)])
