"""Routes through a real gateway on real channels: the OIP front door passes requests through byte for byte,
mirrors never delay or fail the primary's reply (a hanging candidate, a killed one), pairs reach the ranker in
batches at most once a second, and a canary splits and rolls back on the ranker's word.

The endpoints are the fakes of ``tests/fakes/oip.py``; the ranker here is a small recording RankerService (what
the gateway sends, and a state whose rollback flag a test sets), so that these tests see the gateway's side
alone; ``tests/test_routes_ranker.py`` runs the same gateway against the real ranker and its statistics."""

from __future__ import annotations

import contextlib
import time

import grpc
import pytest
from conftest import InProcessServer, metric_sum
from fakes.oip import HashClassifier, OipServer, request_bytes
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from versus.ranker.v1 import ranker_pb2_grpc, routes_pb2

from services.gateway.config import GatewayConfig
from services.gateway.routes import wire

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
COMMON = {"port": 0, "metrics_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1", "drain_delay_s": 0.0,
          "log_format": "text"}


class RecordingRanker(ranker_pb2_grpc.RankerServiceServicer):
    """The ranker's route RPCs as far as a gateway can tell: batches kept (once per batch id), a state per route."""

    def __init__(self) -> None:
        self.batches: list[routes_pb2.RecordRoutePairsRequest] = []
        self.calls: list[tuple[float, str]] = []  # (time, batch id) of every call, retries included
        self.rolled_back: set[str] = set()
        self.fail_next = 0  # answer UNAVAILABLE this many times

    def pairs(self, route: str) -> list[routes_pb2.RoutePair]:
        return [p for b in self.batches if b.route.name == route for p in b.pairs]

    def state(self, route: str) -> routes_pb2.RouteState:
        batches = [b for b in self.batches if b.route.name == route]
        state = routes_pb2.RouteState(pairs=len(self.pairs(route)), rolled_back=route in self.rolled_back)
        if batches:
            state.route.CopyFrom(batches[-1].route)
        return state

    async def RecordRoutePairs(self, request, context):  # noqa: N802 - the protocol's name
        self.calls.append((time.monotonic(), request.batch_id))
        if self.fail_next > 0:
            self.fail_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        if request.batch_id not in {b.batch_id for b in self.batches}:
            self.batches.append(request)
        return routes_pb2.RecordRoutePairsResponse(stored=len(request.pairs), state=self.state(request.route.name))

    async def GetRouteState(self, request, context):  # noqa: N802
        if not any(b.route.name == request.name for b in self.batches):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no route {request.name}")
        return routes_pb2.GetRouteStateResponse(state=self.state(request.name))

    async def ListRoutes(self, request, context):  # noqa: N802
        names = sorted({b.route.name for b in self.batches})
        return routes_pb2.ListRoutesResponse(routes=[self.state(n) for n in names])


class RankerServer(OipServer):
    def __init__(self, ranker: RecordingRanker) -> None:  # noqa: D107 - an OipServer with another servicer
        self.server = grpc.aio.server()
        ranker_pb2_grpc.add_RankerServiceServicer_to_server(ranker, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("routes")
    fakes = {"prim": HashClassifier(), "same": HashClassifier(order=tuple(reversed(HashClassifier().order))),
             "hang": HashClassifier(mode="hang"), "err": HashClassifier(mode="error"),
             "rep-a": HashClassifier(), "rep-b": HashClassifier()}  # two replicas of one deployment
    ranker = RecordingRanker()
    with contextlib.ExitStack() as es:
        servers = {name: es.enter_context(InProcessServer(OipServer.create, fake)) for name, fake in fakes.items()}
        ranker_server = es.enter_context(InProcessServer(RankerServer.create, ranker))
        deployments = [f"{name}={s.target},model=clf,labels={fakes[name].write_labels(tmp / f'{name}.txt')}"
                       for name, s in servers.items()]
        deployments.append(f"dead=127.0.0.1:{_free_port()},model=clf,labels={tmp / 'prim.txt'}")
        # one deployment at two addresses, as a headless Service's DNS name resolves to its pods
        deployments += [f"{dep}=ipv4:{servers['rep-a'].target},{servers['rep-b'].target},model=clf,"
                        f"labels={tmp / 'prim.txt'}" for dep in ("reps", "reps-next")]
        routes = ("shadow=primary:prim,candidate:same,mirror=1,keep_inputs=true",
                  "quarter=primary:prim,candidate:same,mirror=0.25",
                  "hang=primary:prim,candidate:hang,mirror=1,queue=4,mirror_timeout_s=0.3,mirror_concurrency=2",
                  "killed=primary:prim,candidate:dead,mirror=1,mirror_timeout_s=2",
                  "canary=primary:prim,candidate:err,split=0.5",
                  "spread=primary:reps,candidate:reps-next,mirror=1")
        config = GatewayConfig.from_env({}, http_port=-1, ranker=ranker_server.target, deployments=tuple(deployments),
                                        route=routes, **COMMON)
        from services.gateway.server import create_server

        gateway = es.enter_context(InProcessServer(create_server, config))
        channel = es.enter_context(gateway.channel())
        yield gateway, channel, fakes, ranker


def infer(channel: grpc.Channel, raw: bytes, timeout: float = 10) -> bytes:
    return channel.unary_unary(MODEL_INFER)(raw, timeout=timeout)


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_model_infer_passes_through_byte_for_byte(stack) -> None:
    gateway, channel, fakes, ranker = stack
    request = pb.ModelInferRequest.FromString(request_bytes("shadow", [b"\x89PNG-bytes-1"], "pt-1"))
    request.parameters["custom"].string_param = "kept as sent"
    request.outputs.add(name="scores")
    raw = request.SerializeToString() + bytes([0x9A, 0x06, 3]) + b"xyz"  # and a field the gateway does not know
    reply = infer(channel, raw)
    sent = fakes["prim"].received[-1]
    assert sent == wire.rewrite(raw, "clf", "") and wire.without_model(sent) == wire.without_model(raw)
    assert reply == fakes["prim"].answered[-1]  # the primary's reply bytes, unchanged
    wait_for(lambda: any(p.request_id == "pt-1" for p in ranker.pairs("shadow")))
    assert fakes["same"].received[-1] == sent  # the mirror: the same bytes to the candidate


def test_shadow_pairs_reach_the_ranker_in_batches(stack) -> None:
    gateway, channel, fakes, ranker = stack
    for i in range(40):
        infer(channel, request_bytes("shadow", [f"image {i}".encode()], f"shadow-{i}"))
    wait_for(lambda: {f"shadow-{i}" for i in range(40)} <= {p.request_id for p in ranker.pairs("shadow")})
    pairs = {p.request_id: p for p in ranker.pairs("shadow")}
    for i in range(40):
        p = pairs[f"shadow-{i}"]
        assert (p.primary_status, p.candidate_status, p.answered_by) == ("OK", "OK", "primary")
        (row,) = p.rows  # a batch of one: one row, the same label (the candidate lists its labels reversed)
        assert row.primary_label == row.candidate_label and row.top5_overlap == 5
        assert p.primary_latency_s > 0 and p.candidate_latency_s > 0 and len(p.input_digest) == 64
        assert not p.kept_input  # kept only where the sides disagreed
    declaration = ranker.batches[-1].route
    assert (declaration.mode, declaration.share, declaration.primary_id, declaration.candidate_id) == (
        "shadow", 1.0, "prim", "same")
    assert "platform=fake_hash" in declaration.primary_identity and list(declaration.labels)[:2] == ["zero", "one"]
    times = sorted(t for t, batch in ranker.calls if ranker_route(ranker, batch) == "shadow")
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False))  # at most once a second
    assert {b.batch_id for b in ranker.batches} and len({b.batch_id for b in ranker.batches}) == len(ranker.batches)


def ranker_route(ranker: RecordingRanker, batch_id: str) -> str:
    return next((b.route.name for b in ranker.batches if b.batch_id == batch_id), "")


def test_mirror_share_is_a_deterministic_quarter(stack) -> None:
    gateway, channel, fakes, ranker = stack
    before = metric_sum(gateway.metrics(), "versus_route_mirrored_total", route="quarter")
    for i in range(200):
        infer(channel, request_bytes("quarter", [b"q%d" % i], f"quarter-{i}"))
    mirrored = metric_sum(gateway.metrics(), "versus_route_mirrored_total", route="quarter") - before
    from services.gateway.routes.route import share_point

    expected = sum(share_point("quarter", "mirror", f"quarter-{i}") < 0.25 for i in range(200))
    assert mirrored == expected and 30 < expected < 70


def test_a_hanging_candidate_never_delays_the_primary(stack) -> None:
    gateway, channel, fakes, ranker = stack
    direct = grpc.insecure_channel(f"127.0.0.1:{gateway_port(stack, 'prim')}")
    for _ in range(3):  # warm both paths
        infer(channel, request_bytes("hang", [b"warm"]))
        infer(direct, request_bytes("clf", [b"warm"]))
    started = time.perf_counter()
    for i in range(30):
        infer(channel, request_bytes("hang", [b"h%d" % i], f"hang-{i}"), timeout=2)
    elapsed = time.perf_counter() - started
    assert elapsed < 30 * 0.3 / 2, elapsed  # far below one mirror deadline per request
    wait_for(lambda: metric_sum(gateway.metrics(), "versus_route_mirrors_pending", route="hang") == 0, 5)
    m = gateway.metrics()
    full = metric_sum(m, "versus_route_mirror_dropped_total", route="hang", reason="queue_full")
    deadline = metric_sum(m, "versus_route_mirror_dropped_total", route="hang", reason="deadline")
    assert full > 0 and deadline > 0 and full + deadline == metric_sum(m, "versus_route_mirrored_total", route="hang")
    assert metric_sum(m, "versus_route_requests_total", route="hang", answered_by="primary") == 33
    assert not ranker.pairs("hang")  # a drop is not a pair
    wait_for(lambda: sum(b.counters.dropped["deadline"] for b in ranker.batches if b.route.name == "hang")
             == deadline)
    direct.close()


def gateway_port(stack, name: str) -> int:
    gateway, *_ = stack
    return int(next(d for d in gateway.config.deployments if d.startswith(name + "=")).split(",")[0].rsplit(":", 1)[1])


def test_a_killed_candidate_drops_and_no_primary_errors(stack) -> None:
    gateway, channel, fakes, ranker = stack
    for i in range(10):
        reply = pb.ModelInferResponse.FromString(infer(channel, request_bytes("killed", [b"k%d" % i], f"k-{i}")))
        assert reply.outputs[0].name == "scores"
    wait_for(lambda: metric_sum(gateway.metrics(), "versus_route_mirror_dropped_total", route="killed",
                                reason="unavailable") == 10)
    assert not ranker.pairs("killed")


def test_canary_splits_and_rolls_back_on_the_rankers_word(stack) -> None:
    gateway, channel, fakes, ranker = stack
    codes = []
    for i in range(40):
        try:
            infer(channel, request_bytes("canary", [b"c%d" % i], f"canary-{i}"))
            codes.append("OK")
        except grpc.RpcError as err:
            codes.append(err.code().name)
            assert err.details() == "clf: error"  # the candidate's own status, passed through
    from services.gateway.routes.route import share_point

    by_candidate = [share_point("canary", "split", f"canary-{i}") < 0.5 for i in range(40)]
    assert codes == ["INTERNAL" if c else "OK" for c in by_candidate]
    wait_for(lambda: len(ranker.pairs("canary")) == sum(by_candidate))
    assert all(p.answered_by == "candidate" and p.candidate_status == "INTERNAL" and p.primary_status == "OK"
               for p in ranker.pairs("canary"))  # every canary answer paired with a mirror to the primary
    ranker.rolled_back.add("canary")
    wait_for(lambda: metric_sum(gateway.metrics(), "versus_route_rolled_back", route="canary") == 1, 6)
    for i in range(40):  # after the rollback every request is the primary's
        infer(channel, request_bytes("canary", [b"c%d" % i], f"canary-{i}"))
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    view = stub.GetRoute(gateway_pb2.GetRouteRequest(name="canary"), timeout=10).route
    assert view.route.share == 0 and view.state.rolled_back and view.local.answered_by_candidate == sum(by_candidate)


def test_a_deployment_s_replicas_share_its_requests_and_mirrors(stack) -> None:
    """A deployment whose target resolves to several addresses (a headless Service's pods) gets its calls
    round-robin over all of them, forwarded requests and mirrors alike, not pinned to one connection."""
    gateway, channel, fakes, ranker = stack
    a, b = fakes["rep-a"], fakes["rep-b"]
    before = len(a.received), len(b.received)
    for i in range(20):
        infer(channel, request_bytes("spread", [b"s%d" % i], f"spread-{i}"))
    wait_for(lambda: len(ranker.pairs("spread")) == 20)
    got = len(a.received) - before[0], len(b.received) - before[1]
    assert sum(got) == 40 and min(got) >= 10, got  # 20 answers + 20 mirrors, spread over both replicas
    assert all(p.primary_status == p.candidate_status == "OK" for p in ranker.pairs("spread"))


def test_route_views_and_unknown_names(stack) -> None:
    gateway, channel, fakes, ranker = stack
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    names = [v.route.name for v in stub.ListRoutes(gateway_pb2.ListRoutesRequest(), timeout=10).routes]
    assert names == sorted(["shadow", "quarter", "hang", "killed", "canary", "spread"])
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRoute(gateway_pb2.GetRouteRequest(name="x" * 20_000), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < 400
    with pytest.raises(grpc.RpcError) as err:
        infer(channel, request_bytes("nope", [b"a"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    oip = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    meta = oip.ModelMetadata(pb.ModelMetadataRequest(name="shadow"), timeout=10)
    assert meta.name == "shadow" and meta.outputs[0].name == "scores" and meta.platform == "fake_hash"
    assert oip.ModelReady(pb.ModelReadyRequest(name="shadow"), timeout=10).ready
    assert not oip.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=10).ready
    assert oip.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_hostile_requests_at_the_front_door(stack) -> None:
    gateway, channel, fakes, ranker = stack
    for raw in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x0b\x00"):  # not a protobuf message
        with pytest.raises(grpc.RpcError) as err:
            infer(channel, raw)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        infer(channel, request_bytes("n" * 20_000, [b"a"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < 1500
    # a batch over the ranker's 4,096 rows per pair: answered in full, paired by status and latency only
    huge = [b"%d" % i for i in range(5000)]
    reply = pb.ModelInferResponse.FromString(infer(channel, request_bytes("shadow", huge, "huge-1"), timeout=30))
    assert list(reply.outputs[0].shape) == [5000, 10]
    wait_for(lambda: any(p.request_id == "huge-1" for p in ranker.pairs("shadow")))
    (pair,) = [p for p in ranker.pairs("shadow") if p.request_id == "huge-1"]
    assert pair.primary_status == pair.candidate_status == "OK" and not pair.rows
