"""``create_server(config) -> (server, port)`` for the gateway."""

from __future__ import annotations

from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.common.oip_servicer import server_version
from services.common.server import ServiceBinding, VersusServer, build_service_server
from services.gateway.backend import GatewayBackend
from services.gateway.config import GatewayConfig
from services.gateway.routes.front import FrontDoor, front_door_binding
from services.gateway.servicer import GatewayServicer

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


def _front_door(backend: GatewayBackend) -> tuple[ServiceBinding, ...]:
    """The routes' OIP front door on the same port, when the gateway serves routes."""
    table = backend.gateway.routes
    if not table:
        return ()
    config = backend.config
    return (front_door_binding(FrontDoor(table, config.call_timeout_s, config.max_message_bytes, server_version())),)


def create_server(config: GatewayConfig) -> tuple[VersusServer, int]:
    """Build (not start) the gateway server; call with an event loop running."""
    return build_service_server(config, GatewayBackend, GatewayServicer,
                                gateway_pb2_grpc.add_GatewayServiceServicer_to_server, SERVICE_NAME,
                                extra=_front_door)  # type: ignore[arg-type]
