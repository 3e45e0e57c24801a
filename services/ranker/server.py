"""``create_server(config) -> (server, port)`` for the ranker service."""

from __future__ import annotations

from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from services.common.server import VersusServer, build_service_server
from services.ranker.backend import RankerBackend
from services.ranker.config import RankerConfig
from services.ranker.servicer import RankerServicer

SERVICE_NAME = ranker_pb2.DESCRIPTOR.services_by_name["RankerService"].full_name


def create_server(config: RankerConfig) -> tuple[VersusServer, int]:
    """Build (not start) the ranker server; call with an event loop running."""
    return build_service_server(config, RankerBackend, RankerServicer,
                                ranker_pb2_grpc.add_RankerServiceServicer_to_server, SERVICE_NAME)
