"""Routes end to end with the real ranker (in process, SQLite): decisions reached from live traffic, a canary
rolled back by its candidate's errors, feedback turning into labelled accuracy, and hostile requests.

Expectations come from the fakes' own networks (``fakes.oip.reference_scores``: which image a 5%-flipping
candidate flips is a hash of the image), never from the gateway or the ranker under test."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import InProcessServer, metric_sum
from fakes.oip import LABELS, HashClassifier, OipServer, reference_scores, request_bytes
from test_ranker_service import ranker_config
from test_routes import COMMON, infer, wait_for
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from versus.ranker.v1 import routes_pb2

from services.gateway.config import GatewayConfig
from services.gateway.routes.route import share_point

HOLDS, VIOLATED = routes_pb2.DECISION_STATE_HOLDS, routes_pb2.DECISION_STATE_VIOLATED
BATCH = 32  # rows per request: agreement is counted per row


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    from services.gateway.server import create_server as create_gateway
    from services.ranker.server import create_server as create_ranker

    tmp = tmp_path_factory.mktemp("routes-ranker")
    fakes = {"prim": HashClassifier(), "same": HashClassifier(order=tuple(reversed(LABELS))),
             "flip": HashClassifier(flip=0.05), "err": HashClassifier(mode="error")}
    with contextlib.ExitStack() as es:
        ranker = es.enter_context(InProcessServer(create_ranker, ranker_config(f"sqlite:///{tmp / 'r.db'}")))
        servers = {name: es.enter_context(InProcessServer(OipServer.create, fake)) for name, fake in fakes.items()}
        deployments = tuple(f"{name}={s.target},model=clf,labels={fakes[name].write_labels(tmp / f'{name}.txt')}"
                            for name, s in servers.items())
        routes = ("same=primary:prim,candidate:same,mirror=1,bound=agreement>=0.99",
                  "flip=primary:prim,candidate:flip,mirror=1,bound=agreement>=0.99,keep_inputs=true",
                  "canary=primary:prim,candidate:err,split=0.5,bound=error_rate_diff<=0.001")
        config = GatewayConfig.from_env({}, http_port=-1, ranker=ranker.target, deployments=deployments,
                                        route=routes, **COMMON)
        gateway = es.enter_context(InProcessServer(create_gateway, config))
        channel = es.enter_context(gateway.channel())
        yield gateway, channel, gateway_pb2_grpc.GatewayServiceStub(channel)


def images(route: str, request: int) -> list[bytes]:
    return [f"{route}/{request}/{row}".encode() for row in range(BATCH)]


def decision(stub, name: str) -> routes_pb2.BoundDecision:
    (d,) = stub.GetRoute(gateway_pb2.GetRouteRequest(name=name), timeout=10).route.state.decisions
    return d


def replay_until_decided(stub, channel, name: str, max_requests: int = 60) -> routes_pb2.BoundDecision:
    for i in range(max_requests):
        infer(channel, request_bytes(name, images(name, i), f"{name}-{i}"))
        if i % 10 == 9:
            time.sleep(1.2)  # let a batch reach the ranker
            if decision(stub, name).decided_at:
                break
    wait_for(lambda: decision(stub, name).decided_at != "", 5)
    return decision(stub, name)


def test_an_identical_candidate_holds(stack) -> None:
    gateway, channel, stub = stack
    d = replay_until_decided(stub, channel, "same")
    assert d.state == d.decided_state == HOLDS and d.interval.lower >= 0.99 and d.decided_after > 0
    state = stub.GetRoute(gateway_pb2.GetRouteRequest(name="same"), timeout=10).route.state
    assert state.agreement.estimate == 1.0 and state.rows == state.pairs * BATCH
    assert state.top5_overlap.estimate == 1.0  # labels listed in another order still compare by name
    m = gateway.metrics()
    assert metric_sum(m, "versus_route_decision", route="same", bound="agreement >= 0.99") == 1
    assert metric_sum(m, "versus_route_agreement_lower", route="same") >= 0.99


def test_a_candidate_flipping_five_percent_is_violated_at_099(stack) -> None:
    gateway, channel, stub = stack
    d = replay_until_decided(stub, channel, "flip", max_requests=120)
    assert d.state == d.decided_state == VIOLATED and d.interval.upper < 0.99
    view = stub.GetRoute(gateway_pb2.GetRouteRequest(name="flip"), timeout=10).route
    flipped = HashClassifier(flip=0.05)
    sent = [img for i in range(view.state.pairs) for img in images("flip", i)]
    expected = np.mean([np.argmax(flipped.scores(img)) == np.argmax(reference_scores(img)) for img in sent])
    assert abs(view.state.agreement.estimate - expected) < 0.02  # the fake's own flip rate over what was sent
    assert metric_sum(gateway.metrics(), "versus_route_decision", route="flip", bound="agreement >= 0.99") == 2


def test_canary_rolls_back_when_its_candidate_fails(stack) -> None:
    gateway, channel, stub = stack
    failed = 0
    for i in range(200):
        try:
            infer(channel, request_bytes("canary", [b"c%d" % i], f"canary-{i}"))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INTERNAL
            failed += 1
        if i % 20 == 19 and metric_sum(gateway.metrics(), "versus_route_rolled_back", route="canary") == 1:
            break
    wait_for(lambda: metric_sum(gateway.metrics(), "versus_route_rolled_back", route="canary") == 1, 8)
    assert failed == sum(share_point("canary", "split", f"canary-{j}") < 0.5 for j in range(i + 1))
    view = stub.GetRoute(gateway_pb2.GetRouteRequest(name="canary"), timeout=10).route
    assert view.state.rolled_back and "error_rate_diff" in view.state.rollback_reason and view.route.share == 0
    for j in range(40):  # back to 0%: every answer is the primary's, even for ids the split would give the candidate
        infer(channel, request_bytes("canary", [b"after"], f"after-{j}"))


def test_feedback_changes_accuracy_and_mcnemar(stack) -> None:
    gateway, channel, stub = stack
    wait_for(lambda: stub.GetRoute(gateway_pb2.GetRouteRequest(name="flip"), timeout=10).route.state.pairs > 0)
    before = stub.GetRoute(gateway_pb2.GetRouteRequest(name="flip"), timeout=10).route.state
    assert before.accuracy.labelled == 0
    truth = [gateway_pb2.FeedbackRequest().items.add(request_id=f"flip-{i}", row=r,
                                                     label=LABELS[int(np.argmax(reference_scores(img)))])
             for i in range(before.pairs) for r, img in enumerate(images("flip", i))]
    result = stub.Feedback(gateway_pb2.FeedbackRequest(route="flip", items=truth), timeout=30).result
    assert result.stored == len(truth) and not result.unknown_request_ids
    after = stub.GetRoute(gateway_pb2.GetRouteRequest(name="flip"), timeout=10).route.state.accuracy
    flipped = HashClassifier(flip=0.05)
    wrong = sum(np.argmax(flipped.scores(img)) != np.argmax(reference_scores(img))
                for i in range(before.pairs) for img in images("flip", i))
    assert after.labelled == len(truth) and after.primary.estimate == 1.0
    assert after.discordant == wrong and after.candidate_right == 0 and after.mcnemar_p_fixed_n < 1e-3
    again = stub.Feedback(gateway_pb2.FeedbackRequest(route="flip", items=truth[:5]), timeout=30).result
    assert again.duplicates == 5 and again.stored == 0


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert len(err.value.details()) < 1500
    return err.value.code()


def test_hostile_routes_and_feedback(stack) -> None:
    gateway, channel, stub = stack
    item = routes_pb2.FeedbackItem(request_id="same-0", row=0, label="zero")
    assert _code(lambda: stub.Feedback(gateway_pb2.FeedbackRequest(route="x" * 20_000, items=[item]),
                                       timeout=10)) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: stub.Feedback(gateway_pb2.FeedbackRequest(route="same", items=[item] * 10_001),
                                       timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    bad_label = routes_pb2.FeedbackItem(request_id="same-0", label="x" * 20_000)
    assert _code(lambda: stub.Feedback(gateway_pb2.FeedbackRequest(route="same", items=[bad_label]),
                                       timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = stub.Feedback(gateway_pb2.FeedbackRequest(route="same", items=[
        routes_pb2.FeedbackItem(request_id="never-sent", label="one")]), timeout=10).result
    assert list(unknown.unknown_request_ids) == ["never-sent"] and unknown.stored == 0
    # 20,000-character OIP ids and model names: served (the id is recorded by its digest) or NOT_FOUND
    infer(channel, request_bytes("same", [b"long id"], "i" * 20_000))
    with pytest.raises(grpc.RpcError) as err:
        infer(channel, request_bytes("m" * 20_000, [b"x"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < 1500
    # eight clients race on one request id: one pair stored, the rest counted as duplicates
    before = stub.GetRoute(gateway_pb2.GetRouteRequest(name="same"), timeout=10).route.state
    threads = [threading.Thread(target=infer, args=(channel, request_bytes("same", images("race", 0), "race-1")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: stub.GetRoute(gateway_pb2.GetRouteRequest(name="same"), timeout=10).route.state.duplicates
             >= before.duplicates + 7)
    state = stub.GetRoute(gateway_pb2.GetRouteRequest(name="same"), timeout=10).route.state
    assert state.pairs == before.pairs + 2  # race-1 once, and the long id's pair
    labels = [gateway_pb2.FeedbackRequest().items.add(request_id="race-1", label=lab) for lab in LABELS[:8]]
    racing = []
    threads = [threading.Thread(target=lambda it=it: racing.append(stub.Feedback(gateway_pb2.FeedbackRequest(
        route="same", items=[it]), timeout=10).result)) for it in labels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.stored for r in racing) == 1 and sum(len(r.conflicting_request_ids) for r in racing) == 7


def test_a_gateway_with_routes_and_no_ranker_does_not_start(tmp_path: Path) -> None:
    from services.common.errors import ConfigError
    from services.gateway.server import create_server

    labels = HashClassifier().write_labels(tmp_path / "l.txt")
    config = GatewayConfig.from_env({}, http_port=-1, deployments=(f"a=127.0.0.1:1,model=m,labels={labels}",
                                                                  f"b=127.0.0.1:2,model=m,labels={labels}"),
                                    route=("r=primary:a,candidate:b,mirror=1",), **COMMON)
    with pytest.raises(ConfigError, match="routes need --ranker"), InProcessServer(create_server, config):
        pass
