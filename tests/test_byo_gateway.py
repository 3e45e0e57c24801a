"""Bring-your-own-model through the gateway: registered deployments (the bundled tritonserver, and a Versus
ViT over its own Open Inference Protocol) measured on the held-out digits, outcomes recorded once in the
ranker, the report page in Chromium, and every hostile request refused with the right status."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest
from browser import CHROMIUM, Browser
from conftest import InProcessServer
from test_byo_live import triton, weak_digits_dir  # noqa: F401 - fixtures
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
    """ranker + a Versus ViT serving vit-digits (OIP on its native port) + a gateway with four deployments."""
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
        deployments = (deployment("triton-digits", server.url, repo, "digits"),
                       deployment("triton-again", server.url, repo, "digits"),
                       deployment("triton-weak", server.url, repo, "digits-weak"),
                       f"versus-digits={vit.target},model=vit")  # labels read from its LABELS output
        config = GatewayConfig.from_env({}, http_port=-1, ranker=ranker.target, deployments=deployments,
                                        eval_sets=(f"digits={evalset}",), **common)
        gateway = stack.enter_context(InProcessServer(create_gateway, config))
        with gateway.channel() as ch:
            yield gateway_pb2_grpc.GatewayServiceStub(ch), evalset


def compare(stub, ids: list[str], record: bool = True, **kw) -> gateway_pb2.Comparison:
    request = gateway_pb2.CompareRequest(model_ids=ids, eval_set="digits", **kw)
    request.probes.record_matches = record
    return stub.Compare(request, timeout=300).comparison


def test_versus_and_triton_serve_the_same_network_equally(stack) -> None:
    stub, _ = stack
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
    stub, _ = stack
    first = compare(stub, ["triton-digits", "triton-weak", "triton-again"])
    pairs = {(p.deployment_a, p.deployment_b): p for p in first.eval.pairs}
    weak = pairs[("triton-digits", "triton-weak")]
    assert weak.significant and weak.p_value < 1e-3 and weak.only_a > weak.only_b
    assert 0 < len(weak.disagreements) <= 24 and all(d.thumbnail_png.startswith(b"\x89PNG") for d in weak.disagreements)
    same = pairs[("triton-digits", "triton-again")]
    assert not same.significant and same.only_a == same.only_b == 0
    rerun = compare(stub, ["triton-digits", "triton-weak", "triton-again"])
    for p in rerun.eval.pairs:
        assert p.recorded == 0 and p.duplicates == p.images and p.nondeterministic == 0
    assert rerun.eval.leaderboard.matches == first.eval.leaderboard.matches


def test_hostile_requests(stack) -> None:
    stub, _ = stack
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
    stub, _ = stack
    c = compare(stub, ["triton-digits", "triton-weak"], record=False)
    md, html = (stub.RenderComparison(gateway_pb2.RenderComparisonRequest(comparison=c, format=f), timeout=60).content
                for f in (gateway_pb2.RENDER_FORMAT_MARKDOWN, gateway_pb2.RENDER_FORMAT_HTML))
    assert "## Paired tests" in md and "is more accurate" in md and c.eval.eval_set.digest[:16] in md
    assert html.count("<img") == len(c.eval.pairs[0].disagreements) and "<svg" in html
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser at {CHROMIUM}")
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
    stub, _ = stack
    request = gateway_pb2.CompareRequest(model_ids=["triton-digits", "triton-again"], eval_set="digits")
    events = list(stub.CompareStream(request, timeout=300))
    stages = [e.progress.detail for e in events if e.WhichOneof("event") == "progress"]
    assert any(d.startswith("triton-digits: ") and d.endswith("/360 images") for d in stages)
    fractions = [e.progress.fraction for e in events if e.WhichOneof("event") == "progress"]
    assert fractions == sorted(fractions) and events[-1].comparison.eval.pairs[0].images == 360


def test_make_demo_byo_end_to_end(tmp_path: Path) -> None:
    """The demo: Versus and tritonserver equal on the held-out digits, the 2-epoch network found worse, the
    rerun adding nothing, the report written; every process drained with exit code 0."""
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
    assert "exited with codes {'gateway': 0, 'ranker': 0, 'vit': 0}" in proc.stderr
    assert (out / "comparison.html").read_text().count("<img") == 48  # 24 disagreeing images per worse pair
