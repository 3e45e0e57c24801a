"""The shared interceptor against a hostile client, on a real service: malformed protobuf bytes,
invalid UTF-8 in string fields and oversized request ids never reach UNKNOWN/INTERNAL."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from conftest import InProcessServer, metric_sum

from services.common.client import error_details
from services.ranker.config import RankerConfig
from services.ranker.server import create_server as create_ranker
from services.vit.config import VitConfig
from services.vit.server import create_server as create_vit

IDENTITY = {"request_serializer": None, "response_deserializer": None}
#: ClassifyRequest.head (field 3, length-delimited) holding bytes that are not UTF-8.
BAD_UTF8 = bytes([0x1A, 0x02, 0xFF, 0xFE])


@pytest.fixture(scope="module")
def vit(vit_tiny_dir: Path):
    cfg = VitConfig.from_env({}, model=str(vit_tiny_dir), port=0, metrics_port=0, host="127.0.0.1",
                             metrics_host="127.0.0.1", torch_threads=1, drain_delay_s=0.0, log_format="text")
    with InProcessServer(create_vit, cfg) as srv:
        yield srv


@pytest.mark.parametrize("raw", [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\x0f", BAD_UTF8], ids=["junk", "bad-length",
                                                                                                 "bad-utf8"])
def test_malformed_request_bytes_are_invalid_argument(vit: InProcessServer, raw: bytes) -> None:
    with vit.channel() as ch:
        call = ch.unary_unary("/versus.vit.v1.VitService/Classify", **IDENTITY)
        with pytest.raises(grpc.RpcError) as info:
            call(raw, timeout=10)
    d = error_details(info.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT, d
    assert d.violations[0][0] == "request" and d.reason == "INVALID_ARGUMENT"


def test_malformed_item_in_a_bidi_stream_is_invalid_argument(vit: InProcessServer) -> None:
    with vit.channel() as ch:
        call = ch.stream_stream("/versus.vit.v1.VitService/ClassifyStream", **IDENTITY)
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter([b"\xff\xff\xff"]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_no_unknown_or_internal_was_counted(vit: InProcessServer) -> None:
    with vit.channel() as ch:
        ch.unary_unary("/versus.vit.v1.VitService/GetModelInfo", **IDENTITY)(b"", timeout=10)
    metrics = vit.metrics()
    assert metric_sum(metrics, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT") >= 3
    for code in ("UNKNOWN", "INTERNAL"):
        assert metric_sum(metrics, "grpc_server_handled_total", grpc_code=code) == 0


@pytest.mark.parametrize("presented, echoed", [("abc-123", True), ("x" * 4000, False), ("a b;c", False)])
def test_request_ids_are_echoed_only_when_short_and_plain(tmp_path: Path, presented: str, echoed: bool) -> None:
    from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc

    cfg = RankerConfig.from_env({}, db=f"sqlite:///{tmp_path / 'r.db'}", port=0, metrics_port=-1, host="127.0.0.1",
                                drain_delay_s=0.0, log_format="text")
    with InProcessServer(create_ranker, cfg) as srv, srv.channel() as ch:
        stub = ranker_pb2_grpc.RankerServiceStub(ch)
        try:
            _, call = stub.GetLeaderboard.with_call(ranker_pb2.GetLeaderboardRequest(), timeout=10,
                                                    metadata=(("x-request-id", presented),))
        except ValueError:  # grpc's client refuses to send some metadata values itself
            pytest.skip("the client library refuses this metadata value")
        # (ids beyond 16 KiB are refused by the transport itself with RESOURCE_EXHAUSTED, before any handler)
        trailers = dict(call.trailing_metadata())
    assert (trailers["x-request-id"] == presented) is echoed
    assert 1 <= len(trailers["x-request-id"]) <= 64
