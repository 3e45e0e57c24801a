"""Bring-your-own-model through the gateway: registered deployments (the bundled tritonserver, and a Versus
ViT over its own Open Inference Protocol) measured on the held-out digits, outcomes recorded once in the
ranker, the report page in Chromium, and every hostile request refused with the right status."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import grpc
import pytest
from browser import CHROMIUM, Browser
from conftest import InProcessServer, require
from test_byo_live import Proxy, ProxyServer, triton, weak_digits_dir  # noqa: F401 - fixtures
from test_ranker_service import failure
from test_vit_service import vit_config
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.common.errors import ConfigError
from services.gateway.config import GatewayConfig
from versus_cli.byo import write_digits_eval_set

pytestmark = pytest.mark.slow


def deployment(dep_id: str, target: str, repo: Path, model: str) -> str:
    return (f"{dep_id}={target},model={model},labels={repo / model / 'config.json'},"
            f"processor={repo / model / 'preprocessor_config.json'}")


@pytest.fixture(scope="module")
def stack(triton, vit_digits_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """ranker + a Versus ViT serving vit-digits (OIP on its native port) + a gateway with five deployments, one of
    them behind a proxy whose reported weights digest a test changes (a model replaced behind its endpoint)."""
    from services.gateway.server import create_server as create_gateway
    from services.ranker.config import RankerConfig
    from services.ranker.server import create_server as create_ranker
    from services.vit.server import create_server as create_vit

    server, repo = triton
    tmp = tmp_path_factory.mktemp("byo-gw")
    evalset = write_digits_eval_set(tmp / "digits")
    common = {"port": 0, "metrics_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1", "drain_delay_s": 0.0,
              "log_format": "text"}
    with contextlib.ExitStack() as stack:
        ranker = stack.enter_context(InProcessServer(create_ranker, RankerConfig.from_env(
            {}, db=f"sqlite:///{tmp / 'r.db'}", bootstrap_rounds=100, **common)))
        vit = stack.enter_context(InProcessServer(create_vit, vit_config(vit_digits_dir, max_wait_ms=0)))
        proxy = Proxy(server.url, "digest")
        swapped = stack.enter_context(InProcessServer(ProxyServer.create, proxy))
        deployments = (deployment("triton-digits", server.url, repo, "digits"),
                       deployment("triton-swapped", swapped.target, repo, "digits"),
                       deployment("triton-again", server.url, repo, "digits"),
                       deployment("triton-weak", server.url, repo, "digits-weak"),
                       f"versus-digits={vit.target},model=vit")  # labels read from its LABELS output
        config = GatewayConfig.from_env({}, http_port=-1, ranker=ranker.target, deployments=deployments,
                                        eval_sets=(f"digits={evalset}",), **common)
        gateway = stack.enter_context(InProcessServer(create_gateway, config))
        with gateway.channel() as ch:
            yield gateway_pb2_grpc.GatewayServiceStub(ch), evalset, proxy


def compare(stub, ids: list[str], record: bool = True, **kw) -> gateway_pb2.Comparison:
    request = gateway_pb2.CompareRequest(model_ids=ids, eval_set="digits", **kw)
    request.probes.record_matches = record
    return stub.Compare(request, timeout=300).comparison


def test_versus_and_triton_serve_the_same_network_equally(stack) -> None:
    stub, *_ = stack
    c = compare(stub, ["versus-digits", "triton-digits"])
    e = c.eval
    assert e.eval_set.images == 360 and len(e.eval_set.digest) == 64
    assert e.task == f"eval.digits.{e.eval_set.digest[:12]}"
    ours, theirs = e.deployments
    assert ours.state == theirs.state == "complete" and ours.mark == gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE
    assert ours.scored == theirs.scored == 360 and ours.top1 >= 0.95 and theirs.top1 >= 0.95
    assert ours.top1_ci_low <= theirs.top1 <= ours.top1_ci_high  # equal within the intervals
    (pair,) = e.pairs
    assert not pair.significant and "no significant difference on 360 images" in pair.verdict
    assert pair.recorded == 360 and {r.model_id for r in e.leaderboard.ratings} == {"versus-digits", "triton-digits"}
    assert "not catalog checkpoints" in c.notes[0]


def test_a_weaker_network_is_found_and_reruns_add_nothing(stack) -> None:
    stub, *_ = stack
    first = compare(stub, ["triton-digits", "triton-weak", "triton-again"])
    pairs = {(p.deployment_a, p.deployment_b): p for p in first.eval.pairs}
    weak = pairs[("triton-digits", "triton-weak")]
    assert weak.significant and weak.p_value < 1e-3 and weak.only_a > weak.only_b
    assert 0 < len(weak.disagreements) <= 24 and all(d.thumbnail_png.startswith(b"\x89PNG") for d in weak.disagreements)
    same = pairs[("triton-digits", "triton-again")]
    assert not same.significant and same.only_a == same.only_b == 0
    assert first.eval.correction == "holm" and "Holm-adjusted over 3 pairs" in weak.verdict
    assert weak.p_value_adjusted == pytest.approx(min(1.0, 3 * weak.p_value)) or weak.p_value_adjusted > weak.p_value
    assert same.p_value_adjusted == 1.0 and any("Holm" in n for n in first.notes)
    rerun = compare(stub, ["triton-digits", "triton-weak", "triton-again"])
    for p in rerun.eval.pairs:
        assert p.recorded == 0 and p.duplicates == p.images and p.nondeterministic == 0
    assert rerun.eval.leaderboard.matches == first.eval.leaderboard.matches
    reverse = compare(stub, ["triton-weak", "triton-digits"])  # [X, Y] then [Y, X]: the same outcomes
    (p,) = reverse.eval.pairs
    assert p.images == 360 and p.recorded == 0 and p.duplicates == 360 and p.nondeterministic == 0
    assert reverse.eval.correction == "" and p.p_value_adjusted == p.p_value
    assert reverse.eval.leaderboard.matches == first.eval.leaderboard.matches


def test_a_changed_identity_starts_a_new_record(stack) -> None:
    """The model behind an endpoint replaced (its reported weights digest changes): the outcomes go to a new
    ranker id, the page says the identity changed; back to the first model, its record continues."""
    stub, _, proxy = stack

    def run(digest: str, **kw) -> tuple[gateway_pb2.Comparison, gateway_pb2.DeploymentIdentity]:
        proxy.digest = digest
        c = compare(stub, ["triton-swapped", "triton-weak"], **kw)
        return c, next(d.deployment for d in c.eval.deployments if d.deployment.id == "triton-swapped")

    first, before = run("a" * 64, eval_sample_seed=42)
    assert first.eval.sample_seed == 42 and before.weights_digest == "a" * 64
    assert before.ranker_id == "triton-swapped" and not before.identity_change
    swapped, after = run("b" * 64)
    assert after.identity_hash != before.identity_hash and after.ranker_id == f"triton-swapped.{after.identity_hash}"
    assert f"weights digest (reported) {'a' * 24} → {'b' * 24}" in after.identity_change
    assert len(before.fingerprint) == 16 and after.fingerprint == before.fingerprint  # the same network answers
    assert "a new record" in after.identity_change
    (pair,) = swapped.eval.pairs
    assert pair.recorded == pair.images == 360 and pair.duplicates == pair.nondeterministic == 0
    assert {r.model_id for r in swapped.eval.leaderboard.ratings} >= {"triton-swapped", after.ranker_id}
    md = stub.RenderComparison(gateway_pb2.RenderComparisonRequest(
        comparison=swapped, format=gateway_pb2.RENDER_FORMAT_MARKDOWN), timeout=60).content
    assert "**identity changed:**" in md and after.ranker_id in md and "(reported by the server" in md
    back, again = run("a" * 64)
    assert again.ranker_id == "triton-swapped" and back.eval.pairs[0].duplicates == 360


def test_hostile_requests(stack) -> None:
    stub, *_ = stack
    cases = [({"model_ids": ["triton-digits", "nope"], "eval_set": "digits"}, grpc.StatusCode.NOT_FOUND, "deployment"),
             ({"model_ids": ["triton-digits", "triton-weak"], "eval_set": "nope"}, grpc.StatusCode.NOT_FOUND,
              "eval_set"),
             ({"model_ids": ["triton-digits", "x" * 20_000], "eval_set": "digits"}, grpc.StatusCode.NOT_FOUND,
              "deployment"),
             ({"model_ids": ["triton-digits"], "eval_set": "digits"}, grpc.StatusCode.INVALID_ARGUMENT, "model_ids"),
             ({"model_ids": ["triton-digits", "triton-digits"], "eval_set": "digits"},
              grpc.StatusCode.INVALID_ARGUMENT, "model_ids[1]"),
             ({"model_ids": ["triton-digits", "triton-weak"], "eval_set": "digits", "eval_budget_s": 5000},
              grpc.StatusCode.INVALID_ARGUMENT, "eval_budget_s"),
             ({"model_ids": ["triton-digits", "triton-weak"], "eval_set": "digits", "eval_budget_s": float("nan")},
              grpc.StatusCode.INVALID_ARGUMENT, "eval_budget_s")]
    for request, code, where in cases:
        err = failure(stub.Compare, gateway_pb2.CompareRequest(**request))
        assert err.code == code, (request, err)
        assert where in (err.resource_type if code == grpc.StatusCode.NOT_FOUND else err.violations[0][0])
        assert len(err.message) < 600


def test_report_page_in_chromium(stack, tmp_path: Path) -> None:
    stub, *_ = stack
    c = compare(stub, ["triton-digits", "triton-weak"], record=False)
    md, html = (stub.RenderComparison(gateway_pb2.RenderComparisonRequest(comparison=c, format=f), timeout=60).content
                for f in (gateway_pb2.RENDER_FORMAT_MARKDOWN, gateway_pb2.RENDER_FORMAT_HTML))
    assert "## Paired tests" in md and "is more accurate" in md and c.eval.eval_set.digest[:16] in md
    assert f"sample seed **{c.eval.sample_seed}**" in md and "## Identities" in md and "Holm" not in md
    assert html.count("<img") == len(c.eval.pairs[0].disagreements) and "<svg" in html
    require("Chromium", os.access(CHROMIUM, os.X_OK), "apt-get install chromium (make setup does, as root)")
    page = tmp_path / "comparison.html"
    page.write_text(html)

    async def look() -> tuple[str, list]:
        async with Browser() as b:
            await b.navigate(page.as_uri())
            return await b.evaluate("document.querySelectorAll('#disagreements img').length + ':' + "
                                    "document.querySelector('#paired').innerText"), b.errors

    text, errors = asyncio.run(look())
    assert not errors and text.startswith(f"{len(c.eval.pairs[0].disagreements)}:") and "more accurate" in text


def test_a_non_classifier_stops_the_gateway_at_start(triton, tmp_path: Path) -> None:  # noqa: F811
    from services.gateway.server import create_server as create_gateway

    server, repo = triton
    bad = deployment("bad", server.url, repo, "digits") + ",output=last_hidden_state"
    config = GatewayConfig.from_env({}, port=0, metrics_port=0, http_port=-1, host="127.0.0.1",
                                    metrics_host="127.0.0.1", log_format="text", deployments=(bad,))
    with pytest.raises(ConfigError, match="not an FP32"):
        with InProcessServer(create_gateway, config):
            pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no usable images"):
        _registry(GatewayConfig.from_env({}, http_port=-1, eval_sets=(f"e={empty}",)))
    env = {"GATEWAY_HTTP_PORT": "-1", "GATEWAY_DEPLOYMENTS": f"{bad};b=ipv4:127.0.0.1:1,127.0.0.2:1,model=m"}
    assert GatewayConfig.from_env(env).deployments == (bad, "b=ipv4:127.0.0.1:1,127.0.0.2:1,model=m")


def _registry(config: GatewayConfig):
    from services.common.metrics import Metrics
    from services.gateway.byo.registry import ByoRegistry

    return ByoRegistry(config, Metrics())


def test_compare_stream_reports_eval_progress(stack) -> None:
    stub, *_ = stack
    request = gateway_pb2.CompareRequest(model_ids=["triton-digits", "triton-again"], eval_set="digits")
    events = list(stub.CompareStream(request, timeout=300))
    stages = [e.progress.detail for e in events if e.WhichOneof("event") == "progress"]
    assert any(d.startswith("triton-digits: ") and d.endswith("/360 images") for d in stages)
    fractions = [e.progress.fraction for e in events if e.WhichOneof("event") == "progress"]
    assert fractions == sorted(fractions) and events[-1].comparison.eval.pairs[0].images == 360


def test_make_demo_byo_end_to_end(tmp_path: Path) -> None:
    """The demo: Versus and tritonserver equal on the held-out digits, the 2-epoch network found worse (Holm over
    3 pairs), the rerun and the reversed pair adding nothing, the edited set a new record of every image, the
    report written; every process drained with exit code 0."""
    import subprocess
    import sys

    from conftest import MODELS

    out = tmp_path / "demo-byo"
    proc = subprocess.run([sys.executable, "-m", "versus_cli", "demo-byo", "--models-dir", str(MODELS),
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "comparison.md").read_text()
    assert "| versus-digits | triton-digits | 360 |" in md and "no significant difference on 360 images" in md
    assert "versus-digits is more accurate" in md and "triton-digits is more accurate" in md
    assert "recorded 0, already recorded 360, answered differently 0" in proc.stderr
    assert "Holm-adjusted over 3 pairs" in md and "Holm p" in md
    assert "triton-digits vs versus-digits: recorded 0, already recorded 360, answered differently 0" in proc.stderr
    edited = proc.stderr.split("a new digest, a new record ==")[1]
    assert "356 images" in edited and "1 duplicate dropped" in edited
    assert "versus-digits vs triton-digits: recorded 356, already recorded 0, answered differently 0" in edited
    assert "exited with codes {'gateway': 0, 'ranker': 0, 'vit': 0}" in proc.stderr
    assert (out / "comparison.html").read_text().count("<img") == 48  # 24 disagreeing images per worse pair
