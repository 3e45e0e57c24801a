"""Shadow and canary routes in the ranker, on real channels and both stores: batches stored once per batch id,
request ids once per route, epochs, decisions recorded once with their time, the canary rollback flag,
delayed labels, hostile input, and no catalog score, leaderboard or times-matched count ever moved by a route."""

from __future__ import annotations

import math
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import InProcessServer
from test_ranker_hostile import assert_invalid, fail
from test_ranker_service import LARGE, VIT, ranker_config
from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc, routes_pb2

from services.common.client import error_details
from services.ranker.server import create_server

LABELS = ["zero", "one", "two", "three"]
ROUTE_TABLES = ("route_declarations", "route_pairs", "route_counters", "route_batches", "route_feedback",
                "route_decisions", "route_rollbacks", "matches")


@pytest.fixture(params=["sqlite", "postgres"])
def stub(request, tmp_path: Path):
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'r.db'}"
    else:
        import psycopg

        db = request.getfixturevalue("postgres_url")
        with psycopg.connect(db, autocommit=True) as conn:
            for table in ROUTE_TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
    with InProcessServer(create_server, ranker_config(db)) as srv, srv.channel() as ch:
        yield ranker_pb2_grpc.RankerServiceStub(ch)


def declaration(name: str = "digits", mode: str = "shadow", bounds: str = "agreement>=0.9",
                **kw: object) -> routes_pb2.RouteDeclaration:
    parsed = []
    for text in filter(None, bounds.split(",")):
        op = ">=" if ">=" in text else "<="
        metric, value = text.split(op)
        parsed.append(routes_pb2.RouteBound(metric=metric.strip(), op=op, value=float(value)))
    fields = {"name": name, "mode": mode, "share": 1.0, "primary_id": "vit", "primary_identity": "grpc://p vit v1",
              "candidate_id": "triton", "candidate_identity": "grpc://c vit v1", "bounds": parsed, "alpha": 0.05,
              "labels": LABELS} | kw
    return routes_pb2.RouteDeclaration(**fields)


def pair(rid: str, agree: bool = True, cand_status: str = "OK", **kw: object) -> routes_pb2.RoutePair:
    rows = [] if cand_status != "OK" else [routes_pb2.RouteRow(primary_label="one",
                                                                candidate_label="one" if agree else "two",
                                                                top5_overlap=5 if agree else 4)]
    fields = {"request_id": rid, "recorded_at": time.time(), "primary_status": "OK", "candidate_status": cand_status,
              "primary_latency_s": 0.010, "candidate_latency_s": 0.011, "rows": rows,
              "input_digest": f"{hash(rid) % 97:064x}", "answered_by": "primary"} | kw
    return routes_pb2.RoutePair(**fields)


def send(stub, decl: routes_pb2.RouteDeclaration, pairs: list, batch_id: str = "", **counters: int):
    request = routes_pb2.RecordRoutePairsRequest(route=decl, pairs=pairs, batch_id=batch_id or uuid.uuid4().hex,
                                                 counters=routes_pb2.RouteCounters(**counters))
    return stub.RecordRoutePairs(request, timeout=60)


def state(stub, name: str = "digits") -> routes_pb2.RouteState:
    return stub.GetRouteState(routes_pb2.GetRouteStateRequest(name=name), timeout=30).state


def decision(s: routes_pb2.RouteState, metric: str) -> routes_pb2.BoundDecision:
    return next(d for d in s.decisions if d.bound.metric == metric)


def test_an_agreeing_candidate_holds_and_the_decision_is_recorded_once_with_its_time(stub) -> None:
    decl = declaration(bounds="agreement>=0.9")
    s = send(stub, decl, [pair(f"a{i}") for i in range(5)]).state
    assert s.pairs == 5 and s.rows == 5 and decision(s, "agreement").state == routes_pb2.DECISION_STATE_UNDECIDED
    assert not decision(s, "agreement").decided_at  # undecided: nothing recorded
    for batch in range(1, 40):
        s = send(stub, decl, [pair(f"a{batch}-{i}") for i in range(25)], requests=25, mirrored=25).state
        if decision(s, "agreement").state != routes_pb2.DECISION_STATE_UNDECIDED:
            break
    d = decision(s, "agreement")
    assert d.state == routes_pb2.DECISION_STATE_HOLDS and d.interval.lower >= 0.9, d
    assert d.decided_at and d.decided_after == s.pairs and d.decided_state == routes_pb2.DECISION_STATE_HOLDS
    assert d.interval_at_decision.lower >= 0.9 and d.interval_at_decision.n == s.rows
    first = (d.decided_at, d.decided_after, d.interval_at_decision.lower)
    time.sleep(1.1)  # a second recording would carry another time
    s = send(stub, decl, [pair(f"late{i}") for i in range(50)]).state
    again = decision(s, "agreement")
    assert (again.decided_at, again.decided_after, again.interval_at_decision.lower) == first
    assert s.pairs == first[1] + 50 and state(stub).decisions[0].decided_at == first[0]
    assert s.counters.requests == s.counters.mirrored == 25 * batch
    assert len(s.agreement_history) >= 2 and s.agreement_history[-1].n == s.rows
    assert s.agreement.method and s.primary_latency.n == s.pairs and sum(s.primary_latency.counts) == s.pairs


def test_a_candidate_flipping_one_answer_in_ten_is_violated_at_0_99(stub) -> None:
    decl = declaration(bounds="agreement>=0.99")
    for batch in range(20):
        s = send(stub, decl, [pair(f"f{batch}-{i}", agree=i % 10 != 0) for i in range(50)]).state
        if decision(s, "agreement").state == routes_pb2.DECISION_STATE_VIOLATED:
            break
    d = decision(s, "agreement")
    assert d.state == routes_pb2.DECISION_STATE_VIOLATED and d.interval.upper < 0.99 and d.decided_at
    assert not s.rolled_back  # a shadow route never rolls back
    assert s.disagreements and all(x.primary_label != x.candidate_label for x in s.disagreements)
    assert len(s.disagreements) <= 50


@pytest.mark.parametrize("mode", ["canary", "shadow"])
def test_a_failing_canary_rolls_back_and_a_shadow_route_does_not(stub, mode: str) -> None:
    decl = declaration(mode=mode, share=0.05, bounds="agreement>=0.5,error_rate_diff<=0.001")
    for batch in range(20):
        pairs = [pair(f"c{batch}-{i}", cand_status="INTERNAL" if i % 4 == 0 else "OK", answered_by="candidate")
                 for i in range(50)]
        s = send(stub, decl, pairs).state
        if decision(s, "error_rate_diff").state == routes_pb2.DECISION_STATE_VIOLATED:
            break
    assert decision(s, "error_rate_diff").state == routes_pb2.DECISION_STATE_VIOLATED
    assert s.candidate_error_rate.estimate == pytest.approx(0.25, abs=0.02)
    if mode == "canary":
        assert s.rolled_back and s.rolled_back_at and "error_rate_diff" in s.rollback_reason, s.rollback_reason
    else:
        assert not s.rolled_back and not s.rollback_reason
    assert state(stub).rolled_back == (mode == "canary")


def test_one_batch_id_raced_from_eight_tasks_is_stored_once(stub) -> None:
    decl = declaration()
    pairs = [pair(f"r{i}") for i in range(200)]
    barrier = threading.Barrier(8)
    replies: list = []

    def call() -> None:
        barrier.wait(10)
        replies.append(send(stub, decl, pairs, batch_id="gw-1:7", requests=200, dropped={"deadline": 3}))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(replies) == 8 and all(r.stored == 200 and r.duplicates == 0 for r in replies)
    s = state(stub)
    assert s.pairs == 200 and s.duplicates == 0
    assert s.counters.requests == 200 and dict(s.counters.dropped) == {"deadline": 3}


def test_one_request_id_raced_in_many_batches_is_stored_once_and_counted(stub) -> None:
    decl = declaration()
    barrier = threading.Barrier(8)
    replies: list = []

    def call(k: int) -> None:
        barrier.wait(10)
        replies.append(send(stub, decl, [pair("same-id", agree=k % 2 == 0), pair(f"own-{k}")]))

    threads = [threading.Thread(target=call, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(r.stored for r in replies) == 9 and sum(r.duplicates for r in replies) == 7
    s = state(stub)
    assert s.pairs == 9 and s.duplicates == 7
    twice = send(stub, decl, [pair("x"), pair("x")])  # within one batch too
    assert (twice.stored, twice.duplicates) == (1, 1)


def test_a_changed_declaration_starts_a_new_epoch(stub) -> None:
    send(stub, declaration(), [pair(f"e{i}") for i in range(10)])
    s = send(stub, declaration(share=0.5), [pair("e-share")]).state  # the share is no new comparison
    assert (s.epoch, s.pairs, s.route.share) == (1, 11, 0.5)
    s = send(stub, declaration(candidate_identity="grpc://c vit v2"), [pair("e-new")]).state
    assert (s.epoch, s.pairs) == (2, 1) and s.route.candidate_identity == "grpc://c vit v2"
    assert not any(d.decided_at for d in s.decisions)


def test_feedback_first_label_stays_unknown_ids_are_listed(stub) -> None:
    send(stub, declaration(), [pair("p1"), pair("p2", agree=False), pair("p3")])
    items = [routes_pb2.FeedbackItem(request_id=r, label=label) for r, label in
             (("p1", "one"), ("p2", "two"), ("nope", "one"), ("p1", "two"))]
    reply = stub.RecordFeedback(routes_pb2.RecordFeedbackRequest(route="digits", items=items), timeout=30)
    assert reply.stored == 2 and list(reply.unknown_request_ids) == ["nope"]
    assert list(reply.conflicting_request_ids) == ["p1"]
    again = stub.RecordFeedback(routes_pb2.RecordFeedbackRequest(items=items[:2] + [
        routes_pb2.FeedbackItem(request_id="p3", row=1, label="one")]), timeout=30)  # route found by request id
    assert (again.stored, again.duplicates, list(again.unknown_request_ids)) == (0, 2, ["p3"])
    acc = state(stub).accuracy
    assert acc.labelled == 2 and acc.discordant == 1 and acc.candidate_right == 1  # p2: only the candidate right
    assert acc.primary.n == 2 and acc.primary.estimate == 0.5 and acc.candidate.estimate == 1.0
    assert_invalid(fail(stub.RecordFeedback, routes_pb2.RecordFeedbackRequest(items=[
        routes_pb2.FeedbackItem(request_id="p1", label="eleven")])), "items[0].label")
    d = fail(stub.RecordFeedback, routes_pb2.RecordFeedbackRequest(route="unknown-route", items=items))
    assert d.code == grpc.StatusCode.NOT_FOUND


def test_hostile_input_is_invalid_argument_and_stores_nothing(stub) -> None:
    long = "r" * 20_000

    def bad(field: str, decl=None, pairs=None, batch_id: str = "b", **counters: int) -> None:
        request = routes_pb2.RecordRoutePairsRequest(route=decl or declaration(), pairs=pairs or [pair("ok")],
                                                     batch_id=batch_id, counters=routes_pb2.RouteCounters(**counters))
        details = fail(stub.RecordRoutePairs, request)
        assert_invalid(details, field)
        assert long not in details.message

    bad("route.name", declaration(name=long))
    bad("route.name", declaration(name="digits\x00"))
    bad("route.name", declaration(name="Digits"))
    bad("route.mode", declaration(mode="both"))
    bad("route.share", declaration(share=math.nan))
    bad("route.alpha", declaration(alpha=2.0))
    bad("route.primary_id", declaration(primary_id=long))
    bad("route.candidate_identity", declaration(candidate_identity="x\x00"))
    bad("route.bounds[0].metric", declaration(bounds="accuracy>=0.9"))
    bad("route.bounds[0].value", declaration(bounds="agreement>=nan"))
    bad("route.bounds[0].value", declaration(bounds="agreement>=1.5"))
    bad("route.bounds[1].value", declaration(bounds="agreement>=0.9,p99_ratio<=0"))
    bad("route.bounds[1]", declaration(bounds="agreement>=0.9,agreement>=0.9"))
    bad("route.labels[1]", declaration(labels=["a", "b\x00"]))
    bad("batch_id", batch_id="")
    bad("batch_id", batch_id="b\x00")
    bad("pairs", pairs=[pair(f"n{i}") for i in range(10_001)])
    bad("pairs[0].request_id", pairs=[pair(long)])
    bad("pairs[0].request_id", pairs=[pair("id\x00")])
    bad("pairs[1].primary_latency_s", pairs=[pair("a"), pair("b", primary_latency_s=-0.5)])
    bad("pairs[0].candidate_latency_s", pairs=[pair("a", candidate_latency_s=math.nan)])
    bad("pairs[0].recorded_at", pairs=[pair("a", recorded_at=math.inf)])
    bad("pairs[0].primary_status", pairs=[pair("a", primary_status="FINE")])
    bad("pairs[0].input_digest", pairs=[pair("a", input_digest="zz")])
    bad("pairs[0].rows[0].candidate_label", pairs=[pair("a", rows=[routes_pb2.RouteRow(
        primary_label="one", candidate_label="x\x00", top5_overlap=3)])])
    bad("pairs[0].rows[0].top5_overlap", pairs=[pair("a", rows=[routes_pb2.RouteRow(
        primary_label="one", candidate_label="one", top5_overlap=6)])])
    bad("pairs[0].kept_input", pairs=[pair("a", kept_input=b"\x89PNG")])  # the route does not keep inputs
    bad("pairs[0].kept_input", decl=declaration(keep_inputs=True), pairs=[pair("a", kept_input=b"x" * (2**20 + 1))])
    bad("counters.requests", requests=-1)
    bad("counters.dropped", dropped={"Bad Reason": 1})
    for name in ("digits", "unknown"):  # nothing above was stored
        assert fail(stub.GetRouteState, routes_pb2.GetRouteStateRequest(name=name)).code == grpc.StatusCode.NOT_FOUND
    assert_invalid(fail(stub.GetRouteState, routes_pb2.GetRouteStateRequest(name=long)), "name")
    assert list(stub.ListRoutes(routes_pb2.ListRoutesRequest(), timeout=10).routes) == []
    assert_invalid(fail(stub.RecordFeedback, routes_pb2.RecordFeedbackRequest(items=[
        routes_pb2.FeedbackItem(request_id=long, label="one")])), "items[0].request_id")
    assert_invalid(fail(stub.RecordFeedback, routes_pb2.RecordFeedbackRequest(items=[
        routes_pb2.FeedbackItem(request_id="a", label="one")] * 10_001)), "items")
    assert fail(stub.RecordFeedback, routes_pb2.RecordFeedbackRequest(route="nowhere", items=[
        routes_pb2.FeedbackItem(request_id="a", label="one")])).code == grpc.StatusCode.NOT_FOUND
    d = fail(stub.RecordMatch, ranker_pb2.RecordMatchRequest(model_a=VIT, model_b=LARGE, outcome=1, evidence="t",
                                                             task="route.digits", idempotency_key="k"))
    assert_invalid(d, "task")  # route records are never matches


def test_a_kept_input_of_1_mib_comes_back_in_the_gallery(stub) -> None:
    # a kept input of exactly 1 MiB on a route that keeps inputs is fine, and comes back in the gallery
    decl = declaration(name="kept", keep_inputs=True)
    send(stub, decl, [pair("k", agree=False, kept_input=b"x" * 2**20)])
    s = stub.GetRouteState(routes_pb2.GetRouteStateRequest(name="kept"), timeout=30).state
    assert s.disagreements[0].input == b"x" * 2**20
    bare = stub.GetRouteState(routes_pb2.GetRouteStateRequest(name="kept", without_inputs=True), timeout=30).state
    assert bare.disagreements[0].input == b""


def test_route_pairs_never_move_a_catalog_score_leaderboard_or_times_matched(stub) -> None:
    for outcome in (ranker_pb2.OUTCOME_A_WINS, ranker_pb2.OUTCOME_B_WINS, ranker_pb2.OUTCOME_A_WINS):
        stub.RecordMatch(ranker_pb2.RecordMatchRequest(model_a=VIT, model_b=LARGE, outcome=outcome, evidence="t",
                                                       idempotency_key=uuid.uuid4().hex), timeout=10)

    def catalog_view() -> tuple:
        score = stub.Score(ranker_pb2.ScoreRequest(model_ids=[VIT, LARGE]), timeout=30)
        board = stub.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=30)
        models = stub.ListModels(ranker_pb2.ListModelsRequest(), timeout=30)
        return (score.SerializeToString(deterministic=True), board.SerializeToString(deterministic=True),
                list(models.times_matched),
                stub.GetModel(ranker_pb2.GetModelRequest(model_id=VIT), timeout=10).times_matched)

    before = catalog_view()
    assert before[3] == 3
    decl = declaration(name="general", primary_id=VIT, candidate_id=LARGE)  # catalog ids, a task's name
    for batch in range(4):
        send(stub, decl, [pair(f"g{batch}-{i}", agree=i % 3 != 0) for i in range(500)], requests=500)
    assert state(stub, "general").pairs == 2000
    assert catalog_view() == before
    d = fail(stub.RecordMatch, ranker_pb2.RecordMatchRequest(model_a=VIT, model_b=LARGE, outcome=1, evidence="t",
                                                             task="route.general", idempotency_key="k"))
    assert_invalid(d, "task")
    assert catalog_view() == before


def test_list_routes_and_a_20000_pair_route_answers_fast(stub) -> None:
    decl = declaration(name="big", bounds="agreement>=0.99,p99_ratio<=1.10,error_rate_diff<=0.001")
    for batch in range(2):
        reply = send(stub, decl, [pair(f"b{batch}-{i}", agree=i % 50 != 0) for i in range(10_000)])
        assert reply.stored == 10_000
    send(stub, declaration(name="another"), [pair("x1")])
    started = time.perf_counter()
    for _ in range(5):
        s = state(stub, "big")
    per_call = (time.perf_counter() - started) / 5
    assert s.pairs == 20_000 and per_call < 0.5, per_call
    listed = stub.ListRoutes(routes_pb2.ListRoutesRequest(), timeout=30).routes
    assert [r.route.name for r in listed] == ["another", "big"]
    assert all(not r.agreement_history and not r.disagreements for r in listed)


def test_a_costly_route_is_recomputed_by_writes_at_most_at_the_duty_cycle(stub, monkeypatch) -> None:
    """Statistics cost O(pairs): a route of THROTTLE_FROM_PAIRS pairs whose computation takes 0.2 s is recomputed
    by a write at most once per 0.2 s / WRITE_DUTY; in between a write gets the last computed state, whose pairs
    say what it covers. A read always recomputes; a smaller route is recomputed by every write."""
    from services.ranker import routes

    real = routes.compute

    def costly(*args):  # noqa: ANN002, ANN202 - compute's own signature
        time.sleep(0.2)
        return real(*args)

    monkeypatch.setattr(routes, "compute", costly)
    interval = 0.2 / routes.WRITE_DUTY
    small = declaration(name="small")
    assert send(stub, small, [pair("s0")]).state.pairs == 1
    assert send(stub, small, [pair("s1")]).state.pairs == 2  # costly, but small: every write recomputes
    n = routes.THROTTLE_FROM_PAIRS
    decl = declaration(name="costly")
    assert send(stub, decl, [pair(f"c{i}") for i in range(n)]).state.pairs == n
    started = time.monotonic()
    s = send(stub, decl, [pair("c-1")], requests=2).state
    assert time.monotonic() - started < interval / 2
    assert s.pairs == n and s.counters.requests == 2  # the last computed statistics; counters are read each time
    read_started = time.monotonic()
    assert state(stub, "costly").pairs == n + 1  # a read recomputes
    assert send(stub, decl, [pair("c-2")]).state.pairs == n + 1  # within the interval of that computation
    sent = 2
    while s.pairs <= n + 1:  # a later write recomputes, once cost / WRITE_DUTY (>= 2 s) has passed since the read
        assert time.monotonic() - read_started < 60, "a write never recomputed the statistics"
        time.sleep(0.25)
        sent += 1
        s = send(stub, decl, [pair(f"c-{sent}")]).state
    assert s.pairs == n + sent and time.monotonic() - read_started >= interval


def test_an_unknown_route_is_not_found_with_its_resource(stub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.GetRouteState(routes_pb2.GetRouteStateRequest(name="nowhere"), timeout=10)
    d = error_details(info.value)
    assert d.code == grpc.StatusCode.NOT_FOUND and "nowhere" in d.message


def test_a_batch_of_counters_only_and_label_only_rows(stub) -> None:
    s = send(stub, declaration(name="quiet"), [], requests=10, mirrored=4, dropped={"queue_full": 4}).state
    assert (s.pairs, s.rows, s.counters.requests, dict(s.counters.dropped)) == (0, 0, 10, {"queue_full": 4})
    assert all(d.state == routes_pb2.DECISION_STATE_UNDECIDED and not d.decided_at for d in s.decisions)
    rows = [routes_pb2.RouteRow(primary_label="one", candidate_label="one", top5_overlap=-1)]
    s = send(stub, declaration(name="quiet"), [pair("l1", rows=rows), pair("l2", cand_status="UNAVAILABLE")],
             requests=2).state
    assert (s.pairs, s.rows, s.counters.requests) == (2, 1, 12)
    assert s.top5_overlap.n == 0 and s.agreement.n == 1 and s.candidate_error_rate.estimate == 0.5
