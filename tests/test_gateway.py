"""The gateway against real vit, sd35 and ranker services (small models built here), on real channels."""

from __future__ import annotations

import re
import threading
import time

import grpc
import pytest
from conftest import GatewayStack, InProcessServer, metric_sum
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from versus.ranker.v1 import ranker_pb2

from services.common.client import error_details
from services.gateway.server import create_server as create_gateway

pytestmark = pytest.mark.slow  # builds and serves the tiny models (shared by every test of the session)

VIT, LARGE, TURBO, MEDIUM = ("vit-base-patch16-224", "stable-diffusion-3.5-large", "stable-diffusion-3.5-large-turbo",
                             "stable-diffusion-3.5-medium")
MARK = gateway_pb2.EvidenceMark


def request(*ids: str, live: bool = True, **probes: object) -> gateway_pb2.CompareRequest:
    return gateway_pb2.CompareRequest(model_ids=list(ids), probes=gateway_pb2.ProbeOptions(live=live, **probes))


@pytest.fixture(scope="module")
def stub(gateway_stack: GatewayStack):
    with gateway_stack.gateway.channel() as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


@pytest.fixture(scope="module")
def comparison(stub) -> gateway_pb2.Comparison:
    return stub.Compare(request(VIT, LARGE), timeout=300).comparison


def rows(c: gateway_pb2.Comparison, model_id: str) -> list[gateway_pb2.CapabilityEvidence]:
    return list(next(m for m in c.models if m.entry.id == model_id).capabilities)


def row(c: gateway_pb2.Comparison, model_id: str, capability: str,
        claim_part: str = "") -> gateway_pb2.CapabilityEvidence:
    return next(r for r in rows(c, model_id) if r.capability_id == capability and claim_part in r.claim)


def fresh_gateway(stack: GatewayStack, **kw: object) -> InProcessServer:
    """A second gateway on the same services, with its own (empty) probe cache."""
    return InProcessServer(create_gateway, stack.gateway_config(http_port=-1, **kw))


# -- a full comparison -----------------------------------------------------------------------------------
def test_full_comparison_has_every_part(comparison: gateway_pb2.Comparison) -> None:
    c = comparison
    assert list(c.model_ids) == [VIT, LARGE] and len(c.models) == 2 and c.verdict.count("/100") == 2
    vit, large = c.models
    assert (vit.served_by, large.served_by) == ("vit", "sd35/large")
    assert vit.entry.display_name and vit.score.composite > 0 and large.score.composite > 0
    assert {f.name for f in c.facts} >= {"Type", "Parameters", "License", "Pricing", "Rank score (own composite)",
                                         "Rank score on shared dimensions", "Quality", "Served by",
                                         "Latency of this deployment, 1 image (ViT: p50 of 10)"}
    assert c.quality and c.quality[0].generator == LARGE and c.quality[0].images == 2  # tench, goldfish
    assert all(j.image_png.startswith(b"\x89PNG") and j.width == 128 for j in c.judgements)
    assert any("random weights" in n and "mechanism" in n for n in c.notes)
    assert re.fullmatch(r"[0-9a-f]{16}", c.comparison_id) and c.created_at.endswith("+00:00")


def test_structural_probes_check_the_served_shape(comparison: gateway_pb2.Comparison) -> None:
    detail = row(comparison, VIT, "imagenet-1k-classification", "distribution").detail
    assert row(comparison, VIT, "imagenet-1k-classification", "distribution").mark == MARK.Value(
        "EVIDENCE_MARK_VERIFIED_LIVE")
    assert "saw 1000 label scores (1000 distinct indices" in detail and "summing to 1.0000" in detail
    assert "= argmax" in detail and "the other image's answer was different" in detail
    emb = row(comparison, VIT, "embedding-extraction")
    assert emb.mark == MARK.Value("EVIDENCE_MARK_VERIFIED_LIVE") and "identical" in emb.detail
    for cap in ("text-to-image", "seeded-determinism", "megapixel-output", "lora-fine-tuning",
                "classifier-free-guidance"):
        assert row(comparison, LARGE, cap).mark == MARK.Value("EVIDENCE_MARK_VERIFIED_LIVE"), row(comparison, LARGE,
                                                                                                   cap)
    assert "identical pixels" in row(comparison, LARGE, "seeded-determinism").detail
    encoders = next(r for r in rows(comparison, LARGE) if r.capability_id == "three-text-encoders")
    assert encoders.mark == MARK.Value("EVIDENCE_MARK_VERIFIED_LIVE") and "different pixels" in encoders.detail
    edges = row(comparison, LARGE, "megapixel-output").detail
    assert "1024x1024" in edges and "INVALID_ARGUMENT (width" in edges


def test_every_mark_appears_with_its_reason(comparison: gateway_pb2.Comparison) -> None:
    all_rows = [r for m in comparison.models for r in m.capabilities]
    seen = {MARK.Name(r.mark) for r in all_rows}
    assert seen == {"EVIDENCE_MARK_VERIFIED_LIVE", "EVIDENCE_MARK_SUPPORTED", "EVIDENCE_MARK_CONTRADICTED",
                    "EVIDENCE_MARK_CLAIMED", "EVIDENCE_MARK_UNAVAILABLE"}
    for r in all_rows:
        assert r.detail, r
        if r.mark == MARK.Value("EVIDENCE_MARK_UNAVAILABLE"):
            assert r.unavailable_reason
    quant = row(comparison, VIT, "quantization-onnx-export", "2-4x")
    assert quant.mark == MARK.Value("EVIDENCE_MARK_UNAVAILABLE") and "GATEWAY_VIT_PRECISIONS" in quant.detail
    assert row(comparison, LARGE, "text-rendering").mark == MARK.Value("EVIDENCE_MARK_CLAIMED")
    batch = row(comparison, VIT, "batch-inference", "10x batch")  # a GPU claim, measured on a CPU: not decided
    assert batch.mark in (MARK.Value("EVIDENCE_MARK_SUPPORTED"), MARK.Value("EVIDENCE_MARK_CLAIMED"))
    assert any(m.name == "batch10_throughput_ratio" for m in batch.measurements)
    assert "a device the service reports as cpu" in batch.detail


def test_the_84_percent_claim_is_contradicted_with_both_numbers_and_sources(comparison: gateway_pb2.Comparison) -> None:
    r = row(comparison, VIT, "imagenet-1k-classification", "84.0%")
    assert r.mark == MARK.Value("EVIDENCE_MARK_CONTRADICTED") and r.claimed_value == pytest.approx(84.0)
    pairs = [(s.url, s.value) for s in r.sources]
    assert any("pytorch-image-models" in u and v == pytest.approx(81.786, abs=0.01) for u, v in pairs)
    assert any("vision_transformer" in u and v == pytest.approx(81.2) for u, v in pairs)
    assert any(s.label.startswith("ResNet-50") and s.value == pytest.approx(76.13, abs=0.01) for s in r.sources)
    assert "claimed 84" in r.detail and "81.79" in r.detail and "81.2" in r.detail
    assert all(s.as_of and s.locator for s in r.sources)
    official = row(comparison, VIT, "imagenet-1k-classification", "81.2%")
    assert official.mark == MARK.Value("EVIDENCE_MARK_SUPPORTED")


def test_provenance_on_every_number(comparison: gateway_pb2.Comparison) -> None:
    for report in comparison.models:
        assert report.weights.digest and report.weights.kind in ("random", "trained-here", "real")
        # the honest project-built models: the gateway hashed them itself (GATEWAY_WEIGHTS_ROOT), equal to what
        # the services report
        assert report.weights.store_directory and report.weights.digest == report.weights.reported_digest
        # and the ViT reproduced the known answers its build recorded for that digest
        assert report.weights.known_answers == ("reproduced" if report.weights.service == "vit" else "not run"), \
            report.weights.known_answers_detail
        for m in report.measurements:
            assert m.probe and m.measured_at and m.weights.service and m.weights.digest and m.unit, m
            assert m.mechanism_only == (m.weights.kind != "real")
        for r in report.capabilities:
            for s in r.sources:
                assert s.url.startswith("https://") and s.as_of, s
    for fact in comparison.facts:
        assert len(fact.cells) == 2 and all(cell.provenance for cell in fact.cells), fact


# -- trouble -------------------------------------------------------------------------------------------
def test_live_rows_state_what_their_probes_checked(comparison: gateway_pb2.Comparison) -> None:
    """A live row never borrows the catalog's wording (a size probe does not verify "high quality")."""
    from services.gateway.compare.checks import CHECKS

    for r in rows(comparison, LARGE) + rows(comparison, VIT):
        if r.probes and r.mark == MARK.Value("EVIDENCE_MARK_VERIFIED_LIVE") and not r.claimed_value:
            assert any(c.claim in r.claim for c in CHECKS), r.claim
            assert "(served here: a " in r.title and "random" in r.title, r.title


def test_a_huge_id_list_is_refused_at_once_with_one_violation(stub) -> None:
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Compare(gateway_pb2.CompareRequest(model_ids=["x!"] * 200_000), timeout=30)
    d = error_details(info.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.violations == (
        ("model_ids", "compare 2..4 models, got 200000"),)
    assert time.monotonic() - t0 < 5


def test_bad_and_unknown_ids(stub) -> None:
    cases = [(request(VIT), "INVALID_ARGUMENT", "model_ids"),
             (request(VIT, "Bad Id!"), "INVALID_ARGUMENT", "model_ids[1]"),
             (request(VIT, "x" * 20_000), "INVALID_ARGUMENT", "model_ids[1]"),
             (request(VIT, VIT), "INVALID_ARGUMENT", "model_ids[1]"),
             (request(VIT, LARGE, images_per_class=99), "INVALID_ARGUMENT", "probes.images_per_class"),
             (request(VIT, LARGE, imagenet_classes=["no such class zz"]), "INVALID_ARGUMENT",
              "probes.imagenet_classes[0]"),
             (request(VIT, "gpt-99"), "NOT_FOUND", "")]
    for req, code, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.Compare(req, timeout=120)
        d = error_details(info.value)
        assert d.code.name == code, (req.model_ids, d)
        assert len(d.message) < 400
        if field:
            assert d.violations[0][0] == field, d
        else:
            assert (d.resource_type, d.resource_name) == ("model", "gpt-99")


def test_a_downstream_that_is_down_or_wrong_marks_its_evidence_unavailable(gateway_stack: GatewayStack) -> None:
    # vit: nothing listens there; sd35: a live service of the wrong kind (answers UNIMPLEMENTED)
    with fresh_gateway(gateway_stack, vit="127.0.0.1:1", sd35=gateway_stack.ranker.target) as gw, gw.channel() as ch:
        c = gateway_pb2_grpc.GatewayServiceStub(ch).Compare(request(VIT, LARGE), timeout=120).comparison
    by_component = {u.component: u for u in c.unavailable}
    assert by_component["vit"].code == "UNAVAILABLE" and by_component["sd35"].code == "UNIMPLEMENTED"
    assert c.models[0].score.composite > 0 and c.verdict  # the ranker's part is intact
    contradicted = row(c, VIT, "imagenet-1k-classification", "84.0%")
    assert contradicted.mark == MARK.Value("EVIDENCE_MARK_CONTRADICTED")  # sources still decide it
    assert c.models[0].served_by == "vit" and c.models[0].weights.kind == "unknown"
    assert any("Unavailable: vit" in n for n in c.notes)
    live = [r for r in rows(c, VIT) if "served here" in r.title]
    assert live and all(r.mark == MARK.Value("EVIDENCE_MARK_UNAVAILABLE") for r in live)


def test_the_ranker_down_still_gives_live_evidence(gateway_stack: GatewayStack) -> None:
    with fresh_gateway(gateway_stack, ranker="127.0.0.1:1") as gw, gw.channel() as ch:
        c = gateway_pb2_grpc.GatewayServiceStub(ch).Compare(request(VIT, LARGE), timeout=120).comparison
    assert [u.component for u in c.unavailable if u.code == "UNAVAILABLE"] == ["ranker"]
    assert c.models[0].served_by == "vit" and c.models[0].measurements and not c.verdict


def test_the_budget_and_the_callers_deadline_bound_the_comparison(gateway_stack: GatewayStack) -> None:
    # calls get the whole budget (a 1024 px edge queued behind Medium's 2 MP one on a shared 2-core machine can
    # take over a minute): this test is about the budget, not about one call's deadline
    with fresh_gateway(gateway_stack, call_timeout_s=240.0) as gw, gw.channel() as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        t0 = time.monotonic()
        c = stub.Compare(request(VIT, LARGE, budget_s=1.0), timeout=60).comparison
        assert time.monotonic() - t0 < 10
        assert any("budget" in u.message for u in c.unavailable), c.unavailable
        t0 = time.monotonic()
        c = stub.Compare(request(VIT, MEDIUM), timeout=2.0).comparison  # the caller's deadline, not the budget
        assert time.monotonic() - t0 < 2.0 and c.models
        # the probe runs those impatient callers started went on on the gateway's own budget: a patient
        # caller now gets every mark, none of them "budget exhausted"
        c = stub.Compare(request(VIT, LARGE, budget_s=300), timeout=300).comparison
        assert not [u for u in c.unavailable if "budget" in u.message], c.unavailable
        assert row(c, LARGE, "megapixel-output").mark == MARK.Value("EVIDENCE_MARK_VERIFIED_LIVE")


# -- sharing and counting --------------------------------------------------------------------------------
def test_concurrent_comparisons_share_one_probe_run(gateway_stack: GatewayStack) -> None:
    before = metric_sum(gateway_stack.vit.metrics(), "grpc_server_handled_total", grpc_method="Embed")
    with fresh_gateway(gateway_stack) as gw, gw.channel() as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        results: list[gateway_pb2.Comparison] = []
        barrier = threading.Barrier(4)

        def one() -> None:
            barrier.wait()
            results.append(stub.Compare(request(VIT, LARGE), timeout=300).comparison)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shared = metric_sum(gw.metrics(), "versus_gateway_probe_cache_total", result="shared")
    embeds = metric_sum(gateway_stack.vit.metrics(), "grpc_server_handled_total", grpc_method="Embed") - before
    # one run of each probe: embedding (layers, then the final vectors twice), continuity (21 images), the
    # architecture (layers 0..N, then N+1, refused) and transfer (64 images): 3 + 1 + 2 + 1
    assert len(results) == 4 and embeds == 7
    assert shared > 0 and sum(c.probes_run for c in results) == results[0].probes_run + sum(
        c.probes_run for c in results[1:])
    assert sum(c.probes_cached for c in results) > 0


def test_head_to_head_feeds_the_leaderboard_once(gateway_stack: GatewayStack, stub) -> None:
    req = request(VIT, LARGE, head_to_head=True, record_matches=True)
    first = stub.Compare(req, timeout=300).comparison
    generators = {d.model_a for d in first.duels} | {d.model_b for d in first.duels}
    assert generators == {LARGE, TURBO, MEDIUM}  # every served SD3.5 variant, same prompts and seeds
    assert len(first.duels) == 3 * 2 and all(d.task == "mechanism.t2i-imagenet-judge" for d in first.duels)
    assert all(d.match_id > 0 for d in first.duels) and len({d.idempotency_key for d in first.duels}) == 6
    board = first.mechanism_leaderboard  # apart: no real duels, so no real leaderboard
    assert board.task == "mechanism.t2i-imagenet-judge" and board.matches >= 6 and not first.leaderboard.task
    assert all(d.judge_id and d.judge_digest and d.digest_a and d.digest_b and d.judged_at for d in first.duels)
    assert all(m.times_matched == 0 for m in first.models)  # mechanism duels never count
    assert all(r.ci_low <= r.rating <= r.ci_high for r in board.ratings)
    again = stub.Compare(req, timeout=300).comparison  # a retry: nothing counts twice
    assert all(d.duplicate for d in again.duels)
    assert {d.match_id for d in again.duels} == {d.match_id for d in first.duels}
    assert again.mechanism_leaderboard.matches == board.matches
    # the real task's leaderboard never saw a mechanism check
    with gateway_stack.ranker.channel() as ch:
        from versus.ranker.v1 import ranker_pb2_grpc

        real = ranker_pb2_grpc.RankerServiceStub(ch).GetLeaderboard(
            ranker_pb2.GetLeaderboardRequest(task="t2i-imagenet-judge"), timeout=30)
    assert real.matches == 0


def test_turbo_four_steps_and_speed_against_large(stub) -> None:
    c = stub.Compare(request(LARGE, TURBO), timeout=300).comparison
    steps = row(c, TURBO, "four-step-generation", "generates in 4 steps")
    assert steps.mark == MARK.Value("EVIDENCE_MARK_VERIFIED_LIVE") and steps.check == "sd35.steps"
    assert next(m for m in steps.measurements if m.name == "default_steps").value == 4
    live = next(r for r in rows(c, TURBO) if r.capability_id == "four-step-generation" and "served here" in r.title)
    assert live.mark == MARK.Value("EVIDENCE_MARK_VERIFIED_LIVE") and "sd35.vs-large" in live.check, live.detail
    assert "4 vs 28 steps" in live.detail, live.detail
    turbo = next(m for m in c.models if m.entry.id == TURBO)
    speed = next(m for m in turbo.measurements if m.name == "turbo_vs_large_speedup")
    assert speed.value > 1.5 and "Large time" in speed.detail


def test_precision_probe_times_int8_against_fp32(gateway_stack: GatewayStack, vit_tiny_dir) -> None:
    from services.vit.config import VitConfig
    from services.vit.server import create_server as create_vit

    def vit(precision: str) -> InProcessServer:
        return InProcessServer(create_vit, VitConfig.from_env(
            {}, model=str(vit_tiny_dir), precision=precision, torch_threads=1, port=0, metrics_port=0,
            host="127.0.0.1", metrics_host="127.0.0.1", drain_delay_s=0.0, log_format="text"))

    with vit("fp32") as fp32, vit("int8") as int8:
        targets = f"fp32={fp32.target},int8={int8.target}"
        with fresh_gateway(gateway_stack, vit_precisions=targets) as gw, gw.channel() as ch:
            c = gateway_pb2_grpc.GatewayServiceStub(ch).Compare(request(VIT, LARGE), timeout=300).comparison
    claim = row(c, VIT, "quantization-onnx-export", "2-4x")
    # int8 needs both speed and agreement: on random weights agreement cannot decide, so only a slow int8 does
    assert claim.mark != MARK.Value("EVIDENCE_MARK_VERIFIED_LIVE") and claim.check == "vit.precision"
    assert "2-4x" in claim.claim and ("below" in claim.detail or "says nothing about accuracy" in claim.detail)
    speed = claim.measurements[0]
    assert speed.name == "int8_speedup" and speed.value > 0 and speed.probe == "vit.precision.int8"
    assert "vs fp32" in speed.detail and not claim.unavailable_reason


def test_per_service_tokens(gateway_stack: GatewayStack, vit_tiny_dir, tmp_path) -> None:
    from services.vit.config import VitConfig
    from services.vit.server import create_server as create_vit

    token = tmp_path / "vit-token"
    token.write_text("s3cret\n")
    cfg = VitConfig.from_env({}, model=str(vit_tiny_dir), token="s3cret", torch_threads=1, port=0, metrics_port=0,
                             host="127.0.0.1", metrics_host="127.0.0.1", drain_delay_s=0.0, log_format="text")
    with InProcessServer(create_vit, cfg) as vit:
        with fresh_gateway(gateway_stack, vit=vit.target) as gw, gw.channel() as ch:
            c = gateway_pb2_grpc.GatewayServiceStub(ch).Compare(request(VIT, LARGE, live=False), timeout=120).comparison
        assert ("vit", "UNAUTHENTICATED", "UNAUTHENTICATED") in [(u.component, u.code, u.reason) for u in c.unavailable]
        with fresh_gateway(gateway_stack, vit=vit.target, vit_token_file=str(token)) as gw, gw.channel() as ch:
            c = gateway_pb2_grpc.GatewayServiceStub(ch).Compare(request(VIT, LARGE, live=False), timeout=120).comparison
        assert not [u for u in c.unavailable if u.component == "vit"] and c.models[0].served_by == "vit"


# -- streaming, rendering, listing ---------------------------------------------------------------------------
def test_compare_stream_sends_progress_then_the_comparison(stub) -> None:
    events = list(stub.CompareStream(request(VIT, LARGE, live=False), timeout=120))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "comparison" and kinds.count("comparison") == 1 and "progress" in kinds
    fractions = [e.progress.fraction for e in events if e.WhichOneof("event") == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_render_markdown_and_html(stub, comparison: gateway_pb2.Comparison) -> None:
    md = stub.RenderComparison(gateway_pb2.RenderComparisonRequest(comparison=comparison), timeout=60)
    assert md.mime_type.startswith("text/markdown") and "84.0%" in md.content and "contradicted" in md.content.lower()
    html = stub.RenderComparison(gateway_pb2.RenderComparisonRequest(
        comparison=comparison, format=gateway_pb2.RENDER_FORMAT_HTML), timeout=60)
    assert html.mime_type.startswith("text/html") and html.content.count("<svg") >= 1
    assert "no real leaderboard is shown" in html.content  # no duels here: no leaderboard at all
    assert "data:image/png;base64," in html.content
    with pytest.raises(grpc.RpcError) as info:
        stub.RenderComparison(gateway_pb2.RenderComparisonRequest(), timeout=10)
    assert error_details(info.value).violations[0][0] == "comparison"


def test_list_models_shows_what_is_served(stub) -> None:
    models = {m.id: m for m in stub.ListModels(gateway_pb2.ListModelsRequest(), timeout=30).models}
    assert len(models) >= 12
    assert (models[VIT].served_by, models[LARGE].served_by, models["resnet-50"].served_by) == ("vit", "sd35/large", "")
