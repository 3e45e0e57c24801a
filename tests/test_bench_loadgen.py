"""The benchmarks' load generator (bench/loadgen.py) against a real in-process server: it runs in a child
process, sends every call index once, keeps replies in step with latencies and reports its own CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import InProcessServer, encode, metric_sum, sample_image
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2

from bench.loadgen import oip_request, run_clients
from services.vit.config import VitConfig
from services.vit.server import create_server


@pytest.fixture(scope="module")
def server(vit_tiny_dir: Path):
    config = VitConfig.from_env({}, model=str(vit_tiny_dir), port=0, metrics_port=0, host="127.0.0.1",
                                metrics_host="127.0.0.1", torch_threads=1, drain_delay_s=0.0, log_format="text")
    with InProcessServer(create_server, config) as srv:
        yield srv


def test_native_calls_from_a_child_process(server: InProcessServer) -> None:
    payloads = [vit_pb2.ClassifyRequest(images=[common_pb2.Image(data=encode(sample_image(i)))], top_k=i + 1)
                .SerializeToString() for i in range(3)]
    cpu_before = os.times()
    result = run_clients(server.target, "/versus.vit.v1.VitService/Classify", payloads, requests=9, clients=3,
                         keep_responses=True)
    assert len(result.latencies_ms) == len(result.responses) == 9 and result.p50_ms > 0
    tops = sorted(len(vit_pb2.ClassifyResponse.FromString(r).results[0].labels) for r in result.responses)
    assert tops == [1, 1, 1, 2, 2, 2, 3, 3, 3]  # each call index exactly once
    assert 0 < result.cpu_share < 2 and result.rps > 0
    # the calls ran in a child: its CPU lands in this process's children_*, not its own threads
    after = os.times()
    assert after.children_user + after.children_system > cpu_before.children_user + cpu_before.children_system


def test_oip_requests_and_failures_are_reported(server: InProcessServer) -> None:
    import numpy as np

    good = oip_request("vit", {"IMAGE": ("BYTES", np.array([encode(sample_image(0))], dtype=np.object_))},
                       ("LABELS",))
    before = metric_sum(server.metrics(), "grpc_server_handled_total", grpc_method="ModelInfer", grpc_code="OK")
    run_clients(server.target, "/inference.GRPCInferenceService/ModelInfer", [good], requests=4, clients=2)
    after = metric_sum(server.metrics(), "grpc_server_handled_total", grpc_method="ModelInfer", grpc_code="OK")
    assert after == before + 4 + 2  # measured calls plus one warm-up per client
    bad = oip_request("nope", {"IMAGE": ("BYTES", np.array([b"x"], dtype=np.object_))})
    with pytest.raises(RuntimeError, match="NOT_FOUND"):
        run_clients(server.target, "/inference.GRPCInferenceService/ModelInfer", [bad], requests=2, clients=1)
