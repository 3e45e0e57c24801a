"""``create_server(config) -> (server, port)`` for the vit service."""

from __future__ import annotations

from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.server import VersusServer, build_service_server
from services.vit.backend import VitBackend
from services.vit.config import VitConfig
from services.vit.servicer import VitServicer

SERVICE_NAME = vit_pb2.DESCRIPTOR.services_by_name["VitService"].full_name


def create_server(config: VitConfig) -> tuple[VersusServer, int]:
    """Build (not start) the vit server; call with an event loop running."""
    server, port = build_service_server(config, VitBackend, VitServicer, vit_pb2_grpc.add_VitServiceServicer_to_server,
                                        SERVICE_NAME)
    if config.backend == "triton":
        _follow_backend_readiness(server)
    return server, port


def _follow_backend_readiness(server: VersusServer) -> None:
    """Health follows Triton's model after start-up: NOT_SERVING while it is not ready, SERVING when it is
    back — until the server begins to stop, after which nothing may report SERVING again."""
    backend: VitBackend = server.backend  # type: ignore[assignment]
    stop = server.stop

    async def on_readiness(ready: bool) -> None:
        await server.set_serving(ready)

    async def stop_then_ignore(*args: object, **kwargs: object) -> None:
        backend.on_readiness = None
        await stop(*args, **kwargs)  # type: ignore[arg-type]

    backend.on_readiness = on_readiness
    server.stop = stop_then_ignore  # type: ignore[method-assign]
