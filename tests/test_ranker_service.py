"""The ranker on real channels: scores, durable idempotent matches, leaderboards, replicas on PostgreSQL,
and no acknowledged match lost to kill -9."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import InProcessServer
from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from services.common.client import ErrorDetails, error_details
from services.common.errors import ConfigError
from services.ranker.config import RankerConfig
from services.ranker.server import create_server
from versus_cli.launch import ServiceProcess

VIT, LARGE, TURBO, MEDIUM = ("vit-base-patch16-224", "stable-diffusion-3.5-large", "stable-diffusion-3.5-large-turbo",
                             "stable-diffusion-3.5-medium")


def ranker_config(db: str, **kw: object) -> RankerConfig:
    base = {"db": db, "port": 0, "metrics_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1",
            "drain_delay_s": 0.0, "log_format": "text", "bootstrap_rounds": 200}
    return RankerConfig.from_env({}, **(base | kw))


@pytest.fixture()
def ranker(tmp_path: Path):
    with InProcessServer(create_server, ranker_config(f"sqlite:///{tmp_path / 'r.db'}")) as srv, srv.channel() as ch:
        yield ranker_pb2_grpc.RankerServiceStub(ch)


def record(stub, a: str, b: str, outcome: int, task: str = "", key: str = "") -> ranker_pb2.RecordMatchResponse:
    return stub.RecordMatch(ranker_pb2.RecordMatchRequest(model_a=a, model_b=b, outcome=outcome, task=task,
                                                          evidence="test", idempotency_key=key or uuid.uuid4().hex),
                            timeout=10)


def code_of(fn, *args) -> grpc.StatusCode:
    return failure(fn, *args).code


def failure(fn, *args) -> ErrorDetails:
    """The call's status code and google.rpc details (it must fail)."""
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=10)
    return error_details(info.value)


def test_score_vit_vs_sd35_large(ranker) -> None:
    reply = ranker.Score(ranker_pb2.ScoreRequest(model_ids=[VIT, LARGE]), timeout=10)
    assert [s.model_id for s in reply.scores] == sorted([VIT, LARGE], key=lambda m: -{
        s.model_id: s.composite for s in reply.scores}[m])
    for s in reply.scores:
        assert 0 <= s.composite <= 100 and {x.dimension for x in s.sub_scores} == {"adoption", "quality", "ecosystem",
                                                                                  "match_graph"}
        assert all(x.explanation for x in s.sub_scores)
    assert "/100 vs " in reply.verdict and reply.leaders


def test_list_models_returns_the_whole_catalog_with_matches(ranker) -> None:
    record(ranker, VIT, LARGE, ranker_pb2.OUTCOME_A_WINS)
    reply = ranker.ListModels(ranker_pb2.ListModelsRequest(), timeout=10)
    ids = [m.id for m in reply.models]
    assert ids == sorted(ids) and len(ids) >= 12 and {VIT, LARGE, TURBO, MEDIUM} <= set(ids)
    played = dict(zip(ids, reply.times_matched, strict=True))
    assert played[VIT] == played[LARGE] == 1 and played[TURBO] == 0
    assert all(m.capabilities or m.type for m in reply.models)


def test_score_errors(ranker) -> None:
    assert code_of(ranker.Score, ranker_pb2.ScoreRequest()) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(ranker.Score, ranker_pb2.ScoreRequest(model_ids=["gpt-99"])) == grpc.StatusCode.NOT_FOUND
    assert code_of(ranker.Score, ranker_pb2.ScoreRequest(model_ids=[VIT, VIT])) == grpc.StatusCode.INVALID_ARGUMENT


def test_record_match_validation_and_idempotency(ranker) -> None:
    first = record(ranker, VIT, LARGE, ranker_pb2.OUTCOME_B_WINS, key="k1")
    again = record(ranker, VIT, LARGE, ranker_pb2.OUTCOME_B_WINS, key="k1")
    assert not first.duplicate and again.duplicate and again.match_id == first.match_id
    req = ranker_pb2.RecordMatchRequest
    cases = {
        grpc.StatusCode.INVALID_ARGUMENT: [
            req(model_a=VIT, model_b=VIT, outcome=1, idempotency_key="x"),
            req(model_a=VIT, model_b=LARGE, outcome=0, idempotency_key="x"),
            req(model_a=VIT, model_b=LARGE, outcome=1, idempotency_key=""),
            req(model_a=VIT, model_b=LARGE, outcome=1, idempotency_key="k" * 129),
            req(model_a=VIT, model_b=LARGE, outcome=1, idempotency_key="x", task="Bad Task!"),
        ],
        grpc.StatusCode.NOT_FOUND: [req(model_a="nope", model_b=LARGE, outcome=1, idempotency_key="x")],
        grpc.StatusCode.ALREADY_EXISTS: [req(model_a=VIT, model_b=LARGE, outcome=1, idempotency_key="k1")],
    }
    for code, requests in cases.items():
        for r in requests:
            assert code_of(ranker.RecordMatch, r) == code, r
    model = ranker.GetModel(ranker_pb2.GetModelRequest(model_id=VIT), timeout=10)
    assert model.times_matched == 1 and len(model.model.capabilities) == 6
    assert model.model.signals and all(len(s.as_of) == 10 and s.as_of[4] == "-" for s in model.model.signals)
    m = model.model
    assert m.license_terms.id == "apache-2.0" and m.license_terms.open_weights and m.pricing_terms.kind == \
        "free-self-hosted"
    seed = next(c for c in m.claims if c.text == "84.0% vs 76.1% and 77.1%")
    assert seed.capability_id == "imagenet-1k-classification" and seed.value == 84.0
    assert [(x.subject, x.value) for x in seed.compared_with] == [("ResNet-50", 76.1), ("EfficientNet-B0", 77.1)]
    assert {a.name for a in m.not_found} == {"hf_downloads_30d", "hf_likes"}
    quality = next(s for s in m.signals if s.dimension == "quality")
    assert (quality.value, quality.locator.split(":")[0]) == (81.786, "row vit_base_patch16_224.orig_in21k_ft_in1k")
    dalle = ranker.GetModel(ranker_pb2.GetModelRequest(model_id="dall-e-3"), timeout=10).model
    assert not dalle.license_terms.HasField("open_weights")  # not found: not derived
    assert dalle.pricing_terms.kind == "not-found" and not dalle.pricing_terms.HasField("price_usd")
    assert dalle.parameters == 0  # not found
    assert code_of(ranker.GetModel, ranker_pb2.GetModelRequest(model_id="nope")) == grpc.StatusCode.NOT_FOUND


def test_leaderboard_ratings_intervals_and_tasks(ranker) -> None:
    rng = np.random.default_rng(0)
    strength = {VIT: 0.0, LARGE: 1.0, TURBO: 0.5, MEDIUM: -0.5}
    models = list(strength)
    for _ in range(300):
        a, b = rng.choice(models, 2, replace=False)
        p = 1 / (1 + np.exp(strength[b] - strength[a]))
        record(ranker, a, b, 1 if rng.random() < p else 2, task="synthetic")
    for _ in range(3):
        record(ranker, VIT, LARGE, ranker_pb2.OUTCOME_TIE, task="other")
    record(ranker, TURBO, VIT, ranker_pb2.OUTCOME_TIE, task="other")
    record(ranker, TURBO, VIT, ranker_pb2.OUTCOME_A_WINS, task="other")
    board = ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(task="synthetic"), timeout=60)
    assert board.matches == 300 and board.bootstrap_rounds == 200 and board.anchor_model == VIT
    by_id = {r.model_id: r for r in board.ratings}
    assert by_id[VIT].rating == 1000.0
    assert [r.model_id for r in sorted(board.ratings, key=lambda r: -r.rating)] == [LARGE, TURBO, VIT, MEDIUM]
    assert all(r.ci_low <= r.rating <= r.ci_high for r in board.ratings)
    assert sum(r.times_matched for r in board.ratings) == 600 and board.ratings[0].rank == 1
    assert all(r.ties == 0 and r.wins + r.losses == r.times_matched for r in board.ratings)  # none recorded here
    other = {r.model_id: r for r in ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(task="other"),
                                                           timeout=60).ratings}
    assert {m: (r.wins, r.losses, r.ties) for m, r in other.items()} == {
        VIT: (0, 1, 4), LARGE: (0, 0, 3), TURBO: (1, 0, 1)}
    # ties are half a win: three ties leave vit and sd3.5-large level (both anchored on vit = 1000)
    assert other[VIT].rating == 1000.0 and abs(other[LARGE].rating - 1000.0) < 0.05  # (the 1e-4 ridge)
    # turbo: one win + one tie against vit = 1.5 : 0.5 → odds 3:1 → 400·log10(3) ≈ 191 points above vit
    assert abs(other[TURBO].rating - (1000 + 400 * np.log10(3))) < 1.0
    everything = ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=60)
    assert everything.matches == 305
    assert {r.model_id: r.ties for r in everything.ratings} == {VIT: 4, LARGE: 3, TURBO: 1, MEDIUM: 0}
    empty = ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(task="nothing-here"), timeout=10)
    assert not empty.ratings and "no matches" in empty.notes[0]
    scores = ranker.Score(ranker_pb2.ScoreRequest(model_ids=[VIT, LARGE]), timeout=10)
    assert all(not next(x for x in s.sub_scores if x.dimension == "match_graph").missing for s in scores.scores)


def _observable(stub) -> tuple:
    """Everything a real score shows about the seed models: Score, GetModel and ListModels."""
    score = stub.Score(ranker_pb2.ScoreRequest(model_ids=[VIT, LARGE, TURBO]), timeout=10)
    models = [stub.GetModel(ranker_pb2.GetModelRequest(model_id=m), timeout=10).times_matched
              for m in (VIT, LARGE, TURBO)]
    listed = stub.ListModels(ranker_pb2.ListModelsRequest(), timeout=10).times_matched
    return score.SerializeToString(deterministic=True), models, list(listed)


def test_mechanism_matches_never_reach_a_real_score(ranker) -> None:
    """Random-weight duels (mechanism.* tasks) move nothing real: times matched, match graph, composite."""
    record(ranker, LARGE, VIT, ranker_pb2.OUTCOME_A_WINS, task="general")
    before = _observable(ranker)
    for i in range(6):
        record(ranker, LARGE, TURBO, ranker_pb2.OUTCOME_B_WINS if i % 2 else ranker_pb2.OUTCOME_TIE,
               task="mechanism.t2i-imagenet-judge")
    assert _observable(ranker) == before
    score = ranker.Score(ranker_pb2.ScoreRequest(model_ids=[LARGE, TURBO]), timeout=10)
    turbo = next(s for s in score.scores if s.model_id == TURBO)
    assert turbo.times_matched == 0 and next(x for x in turbo.sub_scores if x.dimension == "match_graph").missing
    real = ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=60)
    assert real.matches == 1 and {r.model_id for r in real.ratings} == {LARGE, VIT}
    mechanism = ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(task="mechanism.t2i-imagenet-judge"),
                                      timeout=60)
    assert mechanism.matches == 6 and {r.model_id for r in mechanism.ratings} == {LARGE, TURBO}
    only = ranker.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=60)  # still apart after the fit
    assert only.matches == 1


def test_score_task_picks_the_matches_and_refuses_mechanism_tasks(ranker) -> None:
    record(ranker, LARGE, VIT, ranker_pb2.OUTCOME_A_WINS, task="general")
    record(ranker, TURBO, VIT, ranker_pb2.OUTCOME_A_WINS, task="other")
    by_task = {task: {s.model_id: s.times_matched for s in ranker.Score(
        ranker_pb2.ScoreRequest(model_ids=[VIT, LARGE, TURBO], task=task), timeout=10).scores}
        for task in ("", "general", "other")}
    assert by_task[""] == {VIT: 2, LARGE: 1, TURBO: 1}
    assert by_task["general"] == {VIT: 1, LARGE: 1, TURBO: 0}
    assert by_task["other"] == {VIT: 1, LARGE: 0, TURBO: 1}
    for bad in ("mechanism.t2i-imagenet-judge", "Bad Task!"):
        err = failure(ranker.Score, ranker_pb2.ScoreRequest(model_ids=[VIT], task=bad))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in err.violations] == ["task"]
    assert "mechanism results never reach a score" in failure(
        ranker.Score, ranker_pb2.ScoreRequest(model_ids=[VIT], task="mechanism.x")).message


def test_catalog_entries_carry_conditions_sources_and_shared_scores(ranker) -> None:
    vit = ranker.GetModel(ranker_pb2.GetModelRequest(model_id=VIT), timeout=10).model
    batch = next(c for c in vit.claims if c.text == "10x batch size = ~9x throughput")
    assert (batch.conditions.device_class, batch.conditions.batch, batch.conditions.text) == ("gpu", 10, "on GPU")
    assert not batch.conditions.weights_dependent
    assert vit.parameters_source.startswith("measured:") and vit.hub_id == "google/vit-base-patch16-224"
    assert not vit.published_files and vit.published_files_source.startswith("not found: ")
    pair = ranker.Score(ranker_pb2.ScoreRequest(model_ids=[VIT, "deit-base-patch16-224"]), timeout=10)
    assert list(pair.shared_dimensions) == ["quality"] and "ecosystem" in pair.unshared_dimensions
    assert [s.model_id for s in pair.scores] == ["deit-base-patch16-224", VIT]
    assert [round(s.shared_composite, 1) for s in pair.scores] == [60.4, 58.3]
    assert all(len(x.explanation) > 300 for x in pair.scores[1].sub_scores if x.dimension == "quality")


def test_bad_catalog_stops_startup(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "x.json").write_text(json.dumps({"id": "x"}))
    with pytest.raises(ConfigError, match=r"^x\.json: .*field 'capabilities' is required"):
        config = ranker_config(f"sqlite:///{tmp_path / 'r.db'}", catalog=str(tmp_path / "cat"))
        with InProcessServer(create_server, config):
            pass


def test_two_replicas_share_postgres_state(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS matches")
    cfg = ranker_config(postgres_url)
    with InProcessServer(create_server, cfg) as one, InProcessServer(create_server, cfg) as two, \
            one.channel() as c1, two.channel() as c2:
        s1, s2 = ranker_pb2_grpc.RankerServiceStub(c1), ranker_pb2_grpc.RankerServiceStub(c2)
        first = record(s1, VIT, LARGE, 2, key="shared-key")
        assert record(s2, VIT, LARGE, 2, key="shared-key").match_id == first.match_id  # retry via another replica
        record(s2, TURBO, MEDIUM, 1)
        assert s1.GetLeaderboard(ranker_pb2.GetLeaderboardRequest(), timeout=30).matches == 2
        assert s2.GetModel(ranker_pb2.GetModelRequest(model_id=VIT), timeout=10).times_matched == 1


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_match(tmp_path: Path) -> None:
    db = tmp_path / "ranker.db"
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    svc = ServiceProcess("ranker", ["--db", f"sqlite:///{db}"], log_path=tmp_path / "log").start()

    def writer(worker: int) -> None:
        with grpc.insecure_channel(svc.target) as ch:
            stub = ranker_pb2_grpc.RankerServiceStub(ch)
            i = 0
            while not stop.is_set():
                key = f"w{worker}-{i}"
                try:
                    record(stub, VIT, LARGE, 1 + i % 3, key=key)
                except grpc.RpcError:
                    return  # the server died mid-call: not acknowledged
                with lock:
                    acked.append(key)
                i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait(10)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 20
    stored = {row[0] for row in sqlite3.connect(db).execute("SELECT idempotency_key FROM matches")}
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged matches lost"
    # and the restarted service sees them (a retry of an acknowledged key is a duplicate, not a new match)
    with ServiceProcess("ranker", ["--db", f"sqlite:///{db}"], log_path=tmp_path / "log2") as again, \
            grpc.insecure_channel(again.target) as ch:
        stub = ranker_pb2_grpc.RankerServiceStub(ch)
        assert record(stub, VIT, LARGE, 1 + int(acked[0].split("-")[1]) % 3, key=acked[0]).duplicate


def test_cli_rank_prints_explanations(tmp_path: Path) -> None:
    with ServiceProcess("ranker", ["--db", f"sqlite:///{tmp_path / 'r.db'}"], log_path=tmp_path / "log") as svc:
        out = subprocess.run([sys.executable, "-m", "versus_cli", "rank", "--target", svc.target, VIT, LARGE],
                             capture_output=True, text=True, check=True).stdout
        assert "adoption" in out and "explanation" not in out and "/100 vs " in out
        assert "68.9/100 on quality, ecosystem (ranked on); own composite 68.9/100" in out
        # the quality terms with their raw values, sources and dates
        assert "imagenet1k_top1 = 81.786 percent" in out and "pytorch-image-models" in out
        assert "geneval_overall = 0.71" in out and "https://arxiv.org/abs/2511.22699" in out
        assert "prism_bench_overall = 70.6" in out and "ceiling 80.7 (gpt-image-1" in out
        assert "read 2026-11-27" in out and "floor 76.13 (resnet-50" in out
        doc = json.loads(subprocess.run([sys.executable, "-m", "versus_cli", "rank", "--target", svc.target, VIT,
                                         "--json"], capture_output=True, text=True, check=True).stdout)
        assert doc["scores"][0]["model_id"] == VIT  # proto field names (snake_case)
        board = subprocess.run([sys.executable, "-m", "versus_cli", "leaderboard", "--target", svc.target],
                               capture_output=True, text=True, check=True).stdout
        assert "no matches recorded" in board
