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


class _SlowEcho:
    """A server whose every call takes 0.3 s and answers with the request's own bytes; it notes when each arrived."""

    def __init__(self) -> None:
        import threading
        from concurrent import futures

        import grpc

        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        handler = grpc.unary_unary_rpc_method_handler(self._echo)  # bytes in, bytes out
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Slow", {"Echo": handler}),))
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _echo(self, request: bytes, context: object) -> bytes:
        import time

        with self._lock:
            self.arrivals.append(time.monotonic())
        time.sleep(0.3)
        return request


def test_open_loop_sends_on_schedule_whatever_is_outstanding() -> None:
    slow = _SlowEcho()
    try:
        payloads = [bytes([i]) for i in range(8)]
        result = run_clients(slow.target, "/t.Slow/Echo", payloads, requests=8, clients=1, warmup=0, rate=40,
                             keep_responses=True)
    finally:
        slow.server.stop(None)
    # 8 calls at 40/s are sent over ~0.175 s although each takes 0.3 s: a closed loop would need 2.4 s
    assert max(slow.arrivals) - min(slow.arrivals) < 1.0
    assert result.wall_s < 1.5 and min(result.latencies_ms) >= 300
    assert result.responses == payloads  # in send order
    with pytest.raises(ValueError, match="rate"):
        run_clients(slow.target, "/t.Slow/Echo", payloads, requests=1, clients=1, rate=-1)
