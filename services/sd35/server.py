"""``create_server(config) -> (server, port)`` for the SD3.5 service."""

from __future__ import annotations

from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc

from services.common.oip_servicer import oip_binding
from services.common.server import VersusServer, build_service_server
from services.sd35.backend import Sd35Backend
from services.sd35.config import Sd35Config
from services.sd35.metrics import Sd35Metrics
from services.sd35.oip import oip_models
from services.sd35.servicer import Sd35Servicer

SERVICE_NAME = sd35_pb2.DESCRIPTOR.services_by_name["Sd35Service"].full_name


def create_server(config: Sd35Config, pipelines: dict | None = None) -> tuple[VersusServer, int]:
    """Build (not start) the SD3.5 server (the native API and the Open Inference Protocol on one port); call
    with an event loop running.

    ``pipelines`` (variant → StableDiffusion3Pipeline) skips loading from disk; bench/gpu_sd35.py uses it
    for real-size random-weight pipelines built in GPU memory.
    """
    metrics = Sd35Metrics()
    return build_service_server(config, lambda c, m: Sd35Backend(c, m, pipelines), Sd35Servicer,
                                sd35_pb2_grpc.add_Sd35ServiceServicer_to_server, SERVICE_NAME, metrics,
                                extra=lambda backend: [oip_binding(oip_models(backend), "versus-sd35",
                                                                      http=config.http_port >= 0)])
