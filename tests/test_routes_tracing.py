"""A route's front door as the gateway's other RPCs: the shared interceptor's token (probes open), and a trace
that continues the caller's: the mirror is a child span of the request's span, its call to the candidate a child of
the mirror."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import grpc
import pytest
from conftest import InProcessServer
from fakes.oip import HashClassifier, OipServer, request_bytes
from otlp_receiver import OtlpReceiver
from test_routes import COMMON, MODEL_INFER, RankerServer, RecordingRanker, wait_for
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from services.gateway.config import GatewayConfig

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TOKEN = "route-token"


@pytest.fixture()
def traced_gateway(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[tuple[InProcessServer, OtlpReceiver, dict]]:
    from services.gateway.server import create_server

    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    fakes = {"prim": HashClassifier(), "cand": HashClassifier()}
    with OtlpReceiver() as receiver, contextlib.ExitStack() as es:
        for key, value in receiver.env().items():
            monkeypatch.setenv(key, value)
        servers = {n: es.enter_context(InProcessServer(OipServer.create, f)) for n, f in fakes.items()}
        ranker = es.enter_context(InProcessServer(RankerServer.create, RecordingRanker()))
        deployments = tuple(f"{n}={s.target},model=clf,labels={fakes[n].write_labels(tmp_path / f'{n}.txt')}"
                            for n, s in servers.items())
        config = GatewayConfig.from_env({}, http_port=-1, ranker=ranker.target, deployments=deployments,
                                        route=("traced=primary:prim,candidate:cand,mirror=1",), token=TOKEN,
                                        **COMMON)
        with InProcessServer(create_server, config) as gateway:
            yield gateway, receiver, fakes


def test_the_front_door_needs_the_token_and_its_probes_do_not(traced_gateway) -> None:
    gateway, _, fakes = traced_gateway
    with gateway.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(MODEL_INFER)(request_bytes("traced", [b"x"]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and not fakes["prim"].received
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="traced"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_mirror_is_a_child_span_of_the_requests_trace(traced_gateway) -> None:
    gateway, receiver, fakes = traced_gateway
    metadata = (("authorization", f"Bearer {TOKEN}"), ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"))
    with gateway.channel() as ch:
        ch.unary_unary(MODEL_INFER)(request_bytes("traced", [b"traced image"], "t-1"), timeout=10, metadata=metadata)
    wait_for(lambda: len(fakes["cand"].received) == 1)
    gateway.stop()  # flushes the spans
    spans = [s for s in receiver.wait_for(lambda s: any(x.name == "route.mirror" for x in s), timeout_s=10)
             if s.trace_id == TRACE_ID]
    server = next(s for s in spans if s.name == MODEL_INFER and s.kind == 2)  # SERVER
    mirror = next(s for s in spans if s.name == "route.mirror")
    assert server.parent_id == PARENT_ID and mirror.parent_id == server.span_id
    assert mirror.attributes["route"] == "traced" and mirror.attributes["request_id"] == "t-1"
    clients = [s for s in spans if s.name == MODEL_INFER and s.kind == 3]  # CLIENT: the primary, the candidate
    assert sorted(c.parent_id for c in clients) == sorted([server.span_id, mirror.span_id])
