"""Every declared check can fail: against a fake downstream that misbehaves in exactly the way the check
guards against it is CONTRADICTED, with the service down it is UNAVAILABLE, and against an honest one it
is VERIFIED_LIVE. The fakes are real gRPC servers on loopback (tests/fake_services.py); the ranker is
the real one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import InProcessServer
from fake_services import fake_vit
from fakes import vit as fakes_vit
from fakes.sd35 import fake_sd35
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.gateway.compare.checks import CHECKS

VIT, OTHER, LARGE, TURBO = ("vit-base-patch16-224", "resnet-50", "stable-diffusion-3.5-large",
                            "stable-diffusion-3.5-large-turbo")
MARK = gateway_pb2.EvidenceMark
VERIFIED, CONTRADICTED, UNAVAILABLE = (MARK.Value(f"EVIDENCE_MARK_{m}") for m in ("VERIFIED_LIVE", "CONTRADICTED",
                                                                                   "UNAVAILABLE"))
#: check → (the service, the lie it guards against, the capability its live row speaks for)
LIES = {
    "vit.distribution": [("vit", "sum", "imagenet-1k-classification"), ("vit", "argmax", "imagenet-1k-classification"),
                         ("vit", "empty", "imagenet-1k-classification"),
                         ("vit", "internal", "imagenet-1k-classification")],
    "vit.embedding": [("vit", "truncate", "embedding-extraction"), ("vit", "jitter", "embedding-extraction")],
    "vit.batching": [("vit", "order", "batch-inference"), ("vit", "count", "batch-inference")],
    "vit.transfer": [("vit", "head", "fine-tuning")],
    "sd35.generate": [("sd35", "size", "text-to-image"), ("sd35", "undecodable", "text-to-image"),
                      ("sd35", "flat", "text-to-image"), ("sd35", "ignores-prompt", "text-to-image")],
    "sd35.determinism": [("sd35", "nondeterministic", "seeded-determinism")],
    "sd35.steps": [("sd35", "steps-4", "four-step-generation")],
    "sd35.guidance": [("sd35", "guidance", "classifier-free-guidance")],
    "sd35.resolution": [("sd35", "max-256", "megapixel-output"), ("sd35", "accept-beyond", "megapixel-output")],
    "sd35.t5": [("sd35", "t5", "three-text-encoders")],
    "sd35.lora": [("sd35", "lora", "lora-fine-tuning")],
    "sd35.vs-large": [("sd35", "turbo-slow", "four-step-generation")],
}


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    from services.ranker.config import RankerConfig
    from services.ranker.server import create_server

    db = tmp_path_factory.mktemp("ranker") / "r.db"
    with InProcessServer(create_server, RankerConfig.from_env(
            {}, db=f"sqlite:///{db}", bootstrap_rounds=50, port=0, metrics_port=0, host="127.0.0.1",
            metrics_host="127.0.0.1", drain_delay_s=0.0, log_format="text")) as server:
        yield server


def compare(ranker: InProcessServer, ids: tuple[str, ...], live: bool = True, **targets: str) -> gateway_pb2.Comparison:
    from services.gateway.config import GatewayConfig
    from services.gateway.server import create_server

    cfg = GatewayConfig.from_env({}, **({"port": 0, "metrics_port": 0, "http_port": -1, "host": "127.0.0.1",
                                         "metrics_host": "127.0.0.1", "drain_delay_s": 0.0, "log_format": "text",
                                         "ranker": ranker.target, "cache_ttl_s": 0.0, "compare_budget_s": 60.0,
                                         "vit": "", "sd35": "", "probe_size": 64} | targets))
    with InProcessServer(create_server, cfg) as gw, gw.channel() as ch:
        return gateway_pb2_grpc.GatewayServiceStub(ch).Compare(gateway_pb2.CompareRequest(
            model_ids=list(ids), probes=gateway_pb2.ProbeOptions(live=live)), timeout=120).comparison


def live_row(c: gateway_pb2.Comparison, model: str, capability: str) -> gateway_pb2.CapabilityEvidence:
    report = next(m for m in c.models if m.entry.id == model)
    return next(r for r in report.capabilities if r.capability_id == capability and "served here" in r.title)


def run_with(ranker: InProcessServer, service: str, lies: str) -> gateway_pb2.Comparison:
    if service == "vit":
        with fake_vit(lies) as vit:
            return compare(ranker, (VIT, OTHER), vit=vit.target)
    if service == "vit-int8":
        from versus.common.v1 import common_pb2

        precision = common_pb2.PRECISION_FP32 if lies == "reports-fp32" else common_pb2.PRECISION_INT8
        with fake_vit() as vit, fake_vit(precision=precision) as int8:
            return compare(ranker, (VIT, OTHER), vit=vit.target, vit_precisions=f"int8={int8.target}")
    with fake_sd35(lies) as sd35:
        return compare(ranker, (LARGE, TURBO), sd35=sd35.target, lora_probe_path="")


def test_every_check_has_a_lie_it_catches() -> None:
    consistent = {"vit.continuity-scores", "vit.continuity-embedding", "vit.architecture", "vit.precision",
                  "quality"}  # quality: a generator that ignores the prompt, tests/test_gateway_sd35_fakes.py
    assert {c.id for c in CHECKS} == set(LIES) | consistent  # the consistent liars: below (and there)


@pytest.mark.parametrize(("check", "service", "lie", "capability"),
                         [(c, *case) for c, cases in LIES.items() for case in cases])
def test_a_lie_is_contradicted(ranker, check: str, service: str, lie: str, capability: str) -> None:
    c = run_with(ranker, service, lie)
    model = {"vit": VIT, "vit-int8": VIT}.get(service, TURBO if capability == "four-step-generation" else LARGE)
    row = live_row(c, model, capability)
    assert row.mark == CONTRADICTED, (lie, row)
    assert check in row.check and row.detail and row.measured_conditions.startswith("cpu")


@pytest.mark.parametrize("service", ["vit", "sd35"])
def test_honest_fakes_verify(ranker, service: str) -> None:
    c = run_with(ranker, service, "")
    cases = [case for cases in LIES.values() for case in cases if case[0] == service]
    for _, _, capability in cases:
        model = TURBO if capability == "four-step-generation" else VIT if service.startswith("vit") else LARGE
        assert live_row(c, model, capability).mark == VERIFIED, live_row(c, model, capability)


@pytest.mark.parametrize("service", ["vit", "sd35"])
def test_a_service_down_makes_every_check_unavailable(ranker, service: str) -> None:
    c = run_with(ranker, service, "down")
    rows = [r for m in c.models for r in m.capabilities if "served here" in r.title]
    assert rows and all(r.mark == UNAVAILABLE and r.unavailable_reason for r in rows), rows
    assert sum("UNAVAILABLE (no reason): draining" in r.unavailable_reason for r in rows) >= 3, rows


def test_get_model_info_failing_makes_live_rows_unavailable_not_claimed(ranker) -> None:
    c = compare(ranker, (VIT, OTHER), vit="127.0.0.1:1")
    vit = next(m for m in c.models if m.entry.id == VIT)
    live = [r for r in vit.capabilities if "served here" in r.title]
    assert len(live) == 5 and all(r.mark == UNAVAILABLE and "GetModelInfo failed" in r.detail for r in live), live
    assert not [r for r in vit.capabilities if r.capability_id == "vit.architecture"]  # nothing observed
    batch = next(r for r in vit.capabilities if r.claim.startswith("10x batch"))
    assert batch.mark == UNAVAILABLE and batch.unavailable_reason


def test_a_lying_vit_gets_no_verified_live_mark(ranker) -> None:
    with fake_vit("sum,argmax,order,jitter,truncate,head,real") as vit:
        c = compare(ranker, (VIT, OTHER), vit=vit.target)
    rows = [r for m in c.models for r in m.capabilities]
    assert not [r for r in rows if r.mark == VERIFIED], [r for r in rows if r.mark == VERIFIED]
    vit_report = next(m for m in c.models if m.entry.id == VIT)
    assert vit_report.weights.reported_kind == "real" and vit_report.weights.kind == "external-unverified"
    assert all(m.mechanism_only for m in vit_report.measurements)
    assert {live_row(c, VIT, cap).mark for cap in ("imagenet-1k-classification", "embedding-extraction",
                                                   "batch-inference", "fine-tuning")} == {CONTRADICTED}


def test_an_echoed_pinned_digest_is_not_operator_attested(ranker) -> None:
    """The service echoes the digest the deployer pinned; the gateway computed none (no weights store):
    attestation needs the gateway's own digest (tests/test_weights_lies.py has the attested control)."""
    with fake_vit("real") as vit:
        c = compare(ranker, (VIT, OTHER), vit=vit.target, attest=(f"{VIT}={'f' * 64}",))
    report = next(m for m in c.models if m.entry.id == VIT)
    assert report.weights.kind == "external-unverified", report.weights.proof
    assert "an echoed digest is not attestation" in report.weights.proof
    assert all(m.mechanism_only for m in report.measurements)


def test_self_descriptions_are_claimed_reported_by_the_service(ranker) -> None:
    with fake_vit() as vit:
        c = compare(ranker, (VIT, OTHER), vit=vit.target)
    report = next(m for m in c.models if m.entry.id == VIT)
    row = next(r for r in report.capabilities if r.capability_id == "multi-framework-safetensors")
    assert row.mark == MARK.Value("EVIDENCE_MARK_CLAIMED") and row.detail.startswith("reported by the service")


def test_the_gpu_batch_claim_is_not_decided_on_a_cpu(ranker) -> None:
    with fake_vit() as vit:
        c = compare(ranker, (VIT, OTHER), vit=vit.target)
    report = next(m for m in c.models if m.entry.id == VIT)
    row = next(r for r in report.capabilities if r.claim.startswith("10x batch"))
    assert row.conditions.device_class == "gpu" and row.check == "vit.batching"
    assert row.mark not in (VERIFIED, CONTRADICTED, UNAVAILABLE), row
    assert "a device the service reports as cpu" in row.detail and row.measurements


# -- admission counts cost; unknown enum values ---------------------------------------------------------------
def _gateway(ranker: InProcessServer, **targets: object) -> InProcessServer:
    from services.gateway.config import GatewayConfig
    from services.gateway.server import create_server

    return InProcessServer(create_server, GatewayConfig.from_env({}, **({
        "port": 0, "metrics_port": 0, "http_port": -1, "host": "127.0.0.1", "metrics_host": "127.0.0.1",
        "drain_delay_s": 0.0, "log_format": "text", "ranker": ranker.target, "vit": "", "sd35": ""} | targets)))


def _concurrently(stub, requests: list[gateway_pb2.CompareRequest]) -> list[object]:
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    def one(req: gateway_pb2.CompareRequest) -> object:
        try:
            return stub.Compare(req, timeout=120).comparison
        except grpc.RpcError as err:
            return err

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_catalog_only_comparisons_are_never_refused(ranker) -> None:
    with fake_vit() as vit, _gateway(ranker, vit=vit.target, max_concurrent_compares=1) as gw, gw.channel() as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        catalog_only = gateway_pb2.CompareRequest(model_ids=[VIT, OTHER])
        results = _concurrently(stub, [catalog_only] * 32)
    assert all(isinstance(r, gateway_pb2.Comparison) for r in results), [r for r in results
                                                                           if not isinstance(r, gateway_pb2.Comparison)]


def test_only_new_live_probe_work_is_bounded(ranker) -> None:
    from services.common.client import error_details

    live = gateway_pb2.ProbeOptions(live=True)
    with fake_vit("slow") as vit, fake_sd35() as sd35, \
            _gateway(ranker, vit=vit.target, sd35=sd35.target, max_concurrent_compares=1, lora_probe_path="") as gw, \
            gw.channel() as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(stub.Compare, gateway_pb2.CompareRequest(model_ids=[VIT, OTHER], probes=live),
                                timeout=120)
            import time

            time.sleep(0.5)  # the first holds the one slot, probing the slow vit
            second = pool.submit(stub.Compare, gateway_pb2.CompareRequest(model_ids=[LARGE, TURBO], probes=live),
                                 timeout=120)
            assert first.result().comparison.models
            import grpc

            with pytest.raises(grpc.RpcError) as info:
                second.result()
        d = error_details(info.value)
        assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED and d.retry_after_s and d.retry_after_s > 0
        # the same live comparison again shares or reuses the cached runs: no new work, never refused
        again = _concurrently(stub, [gateway_pb2.CompareRequest(model_ids=[VIT, OTHER], probes=live)] * 8)
        assert all(isinstance(r, gateway_pb2.Comparison) for r in again)


def test_an_unknown_render_format_is_invalid_argument(ranker) -> None:
    import grpc

    from services.common.client import error_details

    with _gateway(ranker) as gw, gw.channel() as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        c = stub.Compare(gateway_pb2.CompareRequest(model_ids=[VIT, OTHER]), timeout=60).comparison
        with pytest.raises(grpc.RpcError) as info:
            stub.RenderComparison(gateway_pb2.RenderComparisonRequest(comparison=c, format=99), timeout=30)
    d = error_details(info.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.violations[0][0] == "format"


@pytest.mark.parametrize("lie", ["undecodable", "down"])
def test_lost_generations_are_not_misses_and_faulty_ones_are_shown(ranker, lie: str) -> None:
    """An outage loses images (counted apart, never as misses); a fault is a miss that is shown."""
    with fake_vit() as vit, fake_sd35(lie) as sd35:
        c = compare(ranker, (LARGE, TURBO), vit=vit.target, sd35=sd35.target, lora_probe_path="",
                    imagenet_classes="tench,goldfish")
    q = next(s for s in c.quality if s.generator == LARGE)
    assert q.requested == 4  # 2 classes x 2 images: the fewest a perfect generator can verify with
    if lie == "down":
        assert (q.images, q.lost, q.failed) == (0, 4, 0) and not [j for j in c.judgements if j.generator == LARGE]
        assert any(u.component == "sd35" and u.code == "UNAVAILABLE" for u in c.unavailable)
    else:
        mine = [j for j in c.judgements if j.generator == LARGE]
        assert (q.images, q.lost, q.failed) == (4, 0, 4) and q.top5_hit_rate == 0.0
        assert len(mine) == 4 and all("cannot identify image" in j.error and j.judge_id == "fake-vit" for j in mine)


# -- consistent liars (tests/fakes/vit.py): each loses exactly the marks it fakes ------------------------------
def verified(c: gateway_pb2.Comparison, model: str = VIT) -> set[str]:
    report = next(m for m in c.models if m.entry.id == model)
    return {r.capability_id for r in report.capabilities if r.mark == VERIFIED}


@pytest.fixture(scope="module")
def honest_vit(ranker) -> set[str]:
    with fake_vit() as vit:
        return verified(compare(ranker, (VIT, OTHER), vit=vit.target))


def test_the_honest_stand_in_keeps_its_behaviour_and_architecture_marks(honest_vit: set[str]) -> None:
    assert honest_vit >= {"imagenet-1k-classification", "embedding-extraction", "batch-inference", "fine-tuning",
                          "vit.architecture"}, honest_vit


def _tiny() -> object:
    from fake_services import FakeVit

    class Tiny(FakeVit):  # an honest smaller build: 2 layers, 64 wide, the catalog's labels
        width, layers = 64, 2
    return Tiny()


@pytest.mark.parametrize(("fake", "lost"), [
    (lambda: fakes_vit.HashClassifier(1), {"imagenet-1k-classification", "batch-inference", "vit.architecture"}),
    (lambda: fakes_vit.HashClassifier(10), {"imagenet-1k-classification", "vit.architecture"}),
    (lambda: fakes_vit.ConstantClassifier(), {"imagenet-1k-classification", "batch-inference"}),
    (lambda: fakes_vit.HashEmbeddings(), {"embedding-extraction", "fine-tuning"}),
    (lambda: fakes_vit.MeanColourHead(), {"fine-tuning"}),
    (_tiny, {"vit.architecture"}),  # not the catalog's architecture; its behaviour rows do not depend on it
], ids=["1-label-hash", "10-label-hash", "constant", "hash-embeddings", "mean-colour-head", "tiny-build"])
def test_a_consistent_liar_loses_exactly_the_marks_it_fakes(ranker, honest_vit: set[str], fake, lost: set[str]) -> None:
    with fakes_vit.serve(fake()) as vit:
        c = compare(ranker, (VIT, OTHER), vit=vit.target)
    got = verified(c)
    assert honest_vit - got == lost and got <= honest_vit, (honest_vit - got, got - honest_vit)
    report = next(m for m in c.models if m.entry.id == VIT)
    for row in report.capabilities:
        if row.capability_id in lost and "served here" in row.title:
            assert row.detail, row


def test_fp32_that_reports_int8_is_caught_by_its_speed_only(ranker) -> None:
    """The reported precision decides nothing: the int8 claim falls on the measured speed-up."""
    from fake_services import FakeVit

    def run(int8: object) -> gateway_pb2.CapabilityEvidence:
        with fakes_vit.serve(FakeVit(delay_s=0.2)) as vit, fakes_vit.serve(int8) as other:
            c = compare(ranker, (VIT, OTHER), vit=vit.target, vit_precisions=f"int8={other.target}")
        report = next(m for m in c.models if m.entry.id == VIT)
        live = [r for r in report.capabilities if r.capability_id == "quantization-onnx-export"]
        assert all(r.mark != VERIFIED for r in live), live  # the reported precision is only shown as reported
        return next(r for r in live if r.claim.startswith("2-4x"))

    from versus.common.v1 import common_pb2

    liar = run(FakeVit(precision=common_pb2.PRECISION_INT8, delay_s=0.2))  # as slow as fp32
    honest = run(FakeVit(precision=common_pb2.PRECISION_INT8))  # much faster
    assert liar.mark == CONTRADICTED and "below 2x" in liar.detail, liar
    assert honest.mark != CONTRADICTED and "speed-up" in honest.detail, honest


def test_a_cpu_service_that_says_cuda_does_not_decide_the_gpu_claim(ranker) -> None:
    from fake_services import FakeVit

    class SaysCuda(FakeVit):
        async def GetModelInfo(self, request, context):
            reply = await super().GetModelInfo(request, context)
            reply.model.device = "cuda:0"
            return reply

    with fakes_vit.serve(SaysCuda()) as vit:
        c = compare(ranker, (VIT, OTHER), vit=vit.target)
    row = next(r for m in c.models if m.entry.id == VIT for r in m.capabilities if r.claim.startswith("10x batch"))
    assert row.mark not in (VERIFIED, CONTRADICTED), row
    assert "reports as gpu" in row.detail and "never decides" in row.detail, row.detail
