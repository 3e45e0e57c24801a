"""The ranker against a hostile client, on real channels: over-long and malformed ids, NUL bytes, empty
fields, unknown models and a race on one idempotency key. Each answer must be the documented code with
its google.rpc details, and a bounded message — never INTERNAL, never "Stream removed"."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path

import grpc
import pytest
from conftest import InProcessServer
from test_ranker_service import LARGE, TURBO, VIT, ranker_config
from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from services.common.client import ErrorDetails, error_details
from services.ranker.server import create_server

INVALID = grpc.StatusCode.INVALID_ARGUMENT
#: A status message longer than this means client input was echoed unbounded.
MAX_MESSAGE = 1024


@pytest.fixture(params=["sqlite", "postgres"])
def stub(request, tmp_path: Path):
    """A ranker on each store: PostgreSQL refuses NUL in text, so both must be shielded from it."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'r.db'}"
    else:
        import psycopg

        db = request.getfixturevalue("postgres_url")
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS matches")
    with InProcessServer(create_server, ranker_config(db)) as srv, srv.channel() as ch:
        yield ranker_pb2_grpc.RankerServiceStub(ch)


def fail(fn, request) -> ErrorDetails:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=10)
    details = error_details(info.value)
    assert len(details.message) <= MAX_MESSAGE, details.message[:200]
    assert details.domain == "versus", details  # every error carries ErrorInfo
    return details


def assert_invalid(details: ErrorDetails, field: str) -> None:
    assert details.code == INVALID, details
    assert details.reason == "INVALID_ARGUMENT"
    assert field in [f for f, _ in details.violations], details.violations


def match(a: str = VIT, b: str = LARGE, **kw: object) -> ranker_pb2.RecordMatchRequest:
    fields = {"outcome": ranker_pb2.OUTCOME_A_WINS, "idempotency_key": uuid.uuid4().hex} | kw
    return ranker_pb2.RecordMatchRequest(model_a=a, model_b=b, **fields)


@pytest.mark.parametrize("size", [129, 10_000, 20_000])
def test_over_long_ids_are_invalid_argument_with_a_bounded_message(stub, size: int) -> None:
    long_id = "a" * size
    d = fail(stub.Score, ranker_pb2.ScoreRequest(model_ids=[VIT, long_id]))
    assert_invalid(d, "model_ids[1]")
    assert f"{size} characters" in d.message and long_id not in d.message
    assert_invalid(fail(stub.GetModel, ranker_pb2.GetModelRequest(model_id=long_id)), "model_id")
    assert_invalid(fail(stub.RecordMatch, match(long_id, LARGE)), "model_a")
    assert_invalid(fail(stub.RecordMatch, match(VIT, long_id)), "model_b")
    assert_invalid(fail(stub.RecordMatch, match(idempotency_key=long_id)), "idempotency_key")
    assert_invalid(fail(stub.RecordMatch, match(task=long_id)), "task")
    assert_invalid(fail(stub.GetLeaderboard, ranker_pb2.GetLeaderboardRequest(task=long_id)), "task")


def test_over_long_ids_of_any_characters_are_bounded(stub) -> None:
    for long_id in ("é" * 15_000, "\x00" * 12_000, "A-" * 9_000):
        d = fail(stub.Score, ranker_pb2.ScoreRequest(model_ids=[long_id]))
        assert_invalid(d, "model_ids[0]")


@pytest.mark.parametrize("bad", ["vit\x00", "\x00", "vit-base-patch16-224\x00x", "Vit", "vit base", "-vit", "vit\n",
                                 "google/vit-base-patch16-224"])
def test_malformed_ids_are_invalid_argument(stub, bad: str) -> None:
    assert_invalid(fail(stub.Score, ranker_pb2.ScoreRequest(model_ids=[bad])), "model_ids[0]")
    assert_invalid(fail(stub.GetModel, ranker_pb2.GetModelRequest(model_id=bad)), "model_id")
    assert_invalid(fail(stub.RecordMatch, match(bad, LARGE)), "model_a")


def test_nul_bytes_in_keys_tasks_and_evidence_are_invalid_argument(stub) -> None:
    assert_invalid(fail(stub.RecordMatch, match(idempotency_key="key\x00")), "idempotency_key")
    assert_invalid(fail(stub.RecordMatch, match(idempotency_key="\x00")), "idempotency_key")
    assert_invalid(fail(stub.RecordMatch, match(idempotency_key="tab\there")), "idempotency_key")
    assert_invalid(fail(stub.RecordMatch, match(task="general\x00")), "task")
    assert_invalid(fail(stub.RecordMatch, match(task="general\n")), "task")
    assert_invalid(fail(stub.RecordMatch, match(evidence="judge said\x00 A")), "evidence")
    assert_invalid(fail(stub.GetLeaderboard, ranker_pb2.GetLeaderboardRequest(task="\x00")), "task")
    # nothing was stored, and printable unicode keys and multi-line evidence are fine
    assert stub.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=10).matches == 0
    ok = stub.RecordMatch(match(idempotency_key="clé-✓", evidence="line 1\nline 2\t{}"), timeout=10)
    assert not ok.duplicate


def test_empty_fields(stub) -> None:
    assert_invalid(fail(stub.Score, ranker_pb2.ScoreRequest()), "model_ids")
    assert_invalid(fail(stub.Score, ranker_pb2.ScoreRequest(model_ids=[""])), "model_ids[0]")
    assert_invalid(fail(stub.GetModel, ranker_pb2.GetModelRequest()), "model_id")
    assert_invalid(fail(stub.RecordMatch, match("", LARGE)), "model_a")
    assert_invalid(fail(stub.RecordMatch, match(VIT, "")), "model_b")
    assert_invalid(fail(stub.RecordMatch, match(idempotency_key="")), "idempotency_key")
    d = fail(stub.RecordMatch, ranker_pb2.RecordMatchRequest())
    assert d.code == INVALID and {f for f, _ in d.violations} == {"model_a", "model_b", "outcome", "idempotency_key"}


def test_several_problems_are_reported_together(stub) -> None:
    d = fail(stub.Score, ranker_pb2.ScoreRequest(model_ids=["x" * 500, VIT, "Bad"]))
    assert [f for f, _ in d.violations] == ["model_ids[0]", "model_ids[2]"]
    d = fail(stub.RecordMatch, match(VIT, VIT, outcome=7, task="?"))
    assert [f for f, _ in d.violations] == ["model_b", "outcome", "task"]


def test_limits_on_counts_and_repeats(stub) -> None:
    d = fail(stub.Score, ranker_pb2.ScoreRequest(model_ids=[f"m{i}" for i in range(17)]))
    assert_invalid(d, "model_ids")
    assert "at most 16" in d.message
    d = fail(stub.Score, ranker_pb2.ScoreRequest(model_ids=[f"m{i}" for i in range(100_000)]))
    assert_invalid(d, "model_ids")
    assert_invalid(fail(stub.Score, ranker_pb2.ScoreRequest(model_ids=[VIT, LARGE, VIT])), "model_ids[2]")
    assert_invalid(fail(stub.RecordMatch, match(evidence="e" * 65_537)), "evidence")


def test_unknown_models_are_not_found_with_resource_info(stub) -> None:
    unknown = "z" * 128  # well-formed and as long as allowed
    for fn, request, field in [
        (stub.Score, ranker_pb2.ScoreRequest(model_ids=[VIT, unknown]), "model_ids[1]"),
        (stub.GetModel, ranker_pb2.GetModelRequest(model_id=unknown), "model_id"),
        (stub.RecordMatch, match(VIT, unknown), "model_b"),
    ]:
        d = fail(fn, request)
        assert d.code == grpc.StatusCode.NOT_FOUND and d.reason == "UNKNOWN_MODEL", d
        assert d.resource_type == "model" and d.resource_name == unknown[:64]
        assert d.message.startswith(f"{field}: unknown model") and unknown not in d.message


def test_reused_key_for_a_different_match_is_already_exists(stub) -> None:
    key = "k" * 128
    first = stub.RecordMatch(match(idempotency_key=key), timeout=10)
    assert stub.RecordMatch(match(idempotency_key=key), timeout=10) == ranker_pb2.RecordMatchResponse(
        match_id=first.match_id, duplicate=True)
    d = fail(stub.RecordMatch, match(idempotency_key=key, outcome=ranker_pb2.OUTCOME_TIE))
    assert d.code == grpc.StatusCode.ALREADY_EXISTS and d.reason == "IDEMPOTENCY_CONFLICT"
    assert key not in d.message


def test_a_race_on_one_key_stores_exactly_one_match(stub) -> None:
    key = f"race-{uuid.uuid4()}"
    same = match(idempotency_key=key, evidence="same")
    other = match(TURBO, LARGE, idempotency_key=key, evidence="other")
    barrier = threading.Barrier(24)
    results: list[object] = []
    lock = threading.Lock()

    def call(request: ranker_pb2.RecordMatchRequest) -> None:
        barrier.wait(10)
        try:
            out: object = stub.RecordMatch(request, timeout=30)
        except grpc.RpcError as err:
            out = err.code()
        with lock:
            results.append(out)

    threads = [threading.Thread(target=call, args=(same if i % 4 else other,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 24
    replies = [r for r in results if isinstance(r, ranker_pb2.RecordMatchResponse)]
    codes = Counter(r for r in results if isinstance(r, grpc.StatusCode))
    assert sum(not r.duplicate for r in replies) <= 1
    assert len({r.match_id for r in replies}) == 1
    assert set(codes) <= {grpc.StatusCode.ALREADY_EXISTS}
    # whichever request won, the requests carrying the other match were all refused
    assert len(replies) in (6, 18) and codes[grpc.StatusCode.ALREADY_EXISTS] == 24 - len(replies)
    assert sum(not r.duplicate for r in replies) == 1
    assert stub.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=10).matches == 1


def test_a_race_on_one_key_across_two_postgres_replicas(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS matches")
    cfg = ranker_config(postgres_url)
    key = f"race-{uuid.uuid4()}"
    with InProcessServer(create_server, cfg) as one, InProcessServer(create_server, cfg) as two, \
            one.channel() as c1, two.channel() as c2:
        stubs = [ranker_pb2_grpc.RankerServiceStub(c) for c in (c1, c2)]
        barrier = threading.Barrier(16)
        replies: list[ranker_pb2.RecordMatchResponse] = []
        lock = threading.Lock()

        def call(i: int) -> None:
            barrier.wait(10)
            reply = stubs[i % 2].RecordMatch(match(idempotency_key=key, evidence="same"), timeout=30)
            with lock:
                replies.append(reply)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(replies) == 16 and len({r.match_id for r in replies}) == 1
        assert sum(not r.duplicate for r in replies) == 1
        assert stubs[0].GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=10).matches == 1
