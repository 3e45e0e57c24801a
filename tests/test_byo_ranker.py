"""Registered deployments in the ranker: known to RecordMatch and GetLeaderboard under eval.* tasks only,
never to catalog scores (Score, GetModel, ListModels, the catalog leaderboard are unchanged)."""

from __future__ import annotations

import grpc
from test_ranker_service import LARGE, VIT, failure, ranker, record  # noqa: F401 - the fixture
from versus.ranker.v1 import ranker_pb2

TASK = "eval.digits.0123456789ab"


def register(stub, dep_id: str, identity: str = "x=127.0.0.1:8001/digits") -> ranker_pb2.RegisterDeploymentResponse:
    return stub.RegisterDeployment(ranker_pb2.RegisterDeploymentRequest(id=dep_id, identity=identity), timeout=10)


def test_register_deployment_is_idempotent_and_never_a_catalog_id(ranker) -> None:  # noqa: F811
    assert not register(ranker, "triton-digits").existed
    assert register(ranker, "triton-digits").existed
    other = failure(ranker.RegisterDeployment, ranker_pb2.RegisterDeploymentRequest(id="triton-digits",
                                                                                   identity="elsewhere"))
    assert other.code == grpc.StatusCode.ALREADY_EXISTS and "another identity" in other.message
    catalog = failure(ranker.RegisterDeployment, ranker_pb2.RegisterDeploymentRequest(id=VIT, identity="x"))
    assert catalog.code == grpc.StatusCode.ALREADY_EXISTS and "catalog model" in catalog.message
    for dep_id, identity, field in (("x" * 20_000, "i", "id"), ("Bad Id", "i", "id"), ("ok", "", "identity"),
                                    ("ok", "nul\x00", "identity"), ("ok", "i" * 1025, "identity")):
        err = failure(ranker.RegisterDeployment, ranker_pb2.RegisterDeploymentRequest(id=dep_id, identity=identity))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.violations[0][0] == field
        assert len(err.message) < 400


def test_eval_matches_never_touch_catalog_scores(ranker) -> None:  # noqa: F811
    before = (ranker.Score(ranker_pb2.ScoreRequest(model_ids=[VIT, LARGE]), timeout=10),
              ranker.ListModels(ranker_pb2.ListModelsRequest(), timeout=10),
              ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=10))
    register(ranker, "ours")
    register(ranker, "theirs", "theirs=127.0.0.1:8002/digits")
    for k in range(12):
        assert not record(ranker, "ours", "theirs", 1 if k < 8 else 3, TASK, f"img{k}").duplicate
    assert record(ranker, "ours", "theirs", 1, TASK, "img0").duplicate  # a rerun adds nothing
    after = (ranker.Score(ranker_pb2.ScoreRequest(model_ids=[VIT, LARGE]), timeout=10),
             ranker.ListModels(ranker_pb2.ListModelsRequest(), timeout=10),
             ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=10))
    assert after == before
    board = ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(task=TASK), timeout=10)
    assert board.matches == 12 and {r.model_id for r in board.ratings} == {"ours", "theirs"}
    ours = next(r for r in board.ratings if r.model_id == "ours")
    assert (ours.wins, ours.losses, ours.ties) == (8, 0, 4)


def test_deployments_and_catalog_models_never_mix(ranker) -> None:  # noqa: F811
    register(ranker, "ours")
    for a, b, task, field in (("ours", VIT, TASK, "model_b"), (VIT, LARGE, TASK, "model_a"),
                              ("ours", "unregistered", TASK, "model_b"), ("ours", VIT, "imagenet", "model_a")):
        err = failure(ranker.RecordMatch, ranker_pb2.RecordMatchRequest(
            model_a=a, model_b=b, outcome=1, task=task, evidence="e", idempotency_key=f"{a}{b}{task}"))
        assert err.code == grpc.StatusCode.NOT_FOUND and err.message.startswith(field), err.message


def test_score_refuses_an_eval_task(ranker) -> None:  # noqa: F811
    """An eval.* task holds deployments, never catalog models: Score on it is INVALID_ARGUMENT (as for
    mechanism.*), not a report of 0 matches; the catalog's Score over every task leaves its matches out."""
    register(ranker, "ours")
    register(ranker, "theirs", "theirs=127.0.0.1:8002/digits")
    record(ranker, "ours", "theirs", 1, TASK, "img0")
    err = failure(ranker.Score, ranker_pb2.ScoreRequest(model_ids=[VIT], task=TASK))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in err.violations] == ["task"]
    assert "is an eval task" in err.message and "GetLeaderboard" in err.message
    every = ranker.Score(ranker_pb2.ScoreRequest(model_ids=[VIT, LARGE]), timeout=10)
    assert {s.model_id: s.times_matched for s in every.scores} == {VIT: 0, LARGE: 0}
