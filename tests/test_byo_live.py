"""Bring-your-own-model, live: the project's digits networks served by the bundled tritonserver over the
Open Inference Protocol, measured on the held-out digits; and endpoints that misbehave in exactly one
way (a proxy in front of the real server) — each ends in the state the evidence rules want."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from test_triton import needs_tritonserver
from tritonclient.grpc import service_pb2_grpc

from services.common.errors import ConfigError
from services.common.known_answers import REFERENCE_COUNT
from services.gateway.byo.evalrun import paired, run_deployment, score
from services.gateway.byo.evalset import load_eval_set, stratified_order
from services.gateway.deployments import match_labels, parse_deployment
from services.gateway.oip_client import OipClient
from versus_cli.byo import write_digits_eval_set, write_digits_repository
from versus_cli.export import LocalTriton, _free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weak_digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same network trained for 2 epochs instead of 40: measurably worse."""
    from services.vit.builders import build_vit_digits

    out = tmp_path_factory.mktemp("weak") / "vit-digits-weak"
    return build_vit_digits(out, epochs=2, log_fn=lambda _m: None)


@pytest.fixture(scope="module")
def digits_set(tmp_path_factory: pytest.TempPathFactory):
    return load_eval_set("digits", write_digits_eval_set(tmp_path_factory.mktemp("evalset") / "digits"))


@pytest.fixture(scope="module")
def triton(vit_digits_dir: Path, weak_digits_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    needs_tritonserver()
    work = tmp_path_factory.mktemp("byo-repo")
    repo = write_digits_repository({"digits": vit_digits_dir, "digits-weak": weak_digits_dir}, work / "repo", work)
    with LocalTriton(repo) as server:
        server.wait_ready(120, ("digits", "digits-weak"))
        yield server, repo


def spec(name: str, target: str, repo: Path, model: str = "", extra: str = ""):
    model_dir = repo / (model or "digits")
    return parse_deployment(f"{name}={target},model={model or 'digits'},labels={model_dir / 'config.json'},"
                            f"processor={model_dir / 'preprocessor_config.json'}{extra}")


async def measure(dep, eval_set, budget_s: float = 120.0, concurrency: int = 4, seed: int = 0):
    client = OipClient(dep)
    try:
        run = await run_deployment(client, eval_set, stratified_order(eval_set.images, seed),
                                   deadline=time.monotonic() + budget_s, concurrency=concurrency, call_timeout_s=10.0)
        return run, client.endpoint
    finally:
        await client.close()


def test_triton_endpoints_measured_on_held_out_digits(triton, digits_set) -> None:
    server, repo = triton
    good, good_ep = asyncio.run(measure(spec("good", server.url, repo), digits_set))
    again, _ = asyncio.run(measure(spec("again", server.url, repo), digits_set))
    weak, weak_ep = asyncio.run(measure(spec("weak", server.url, repo, "digits-weak"), digits_set))
    assert good.state == again.state == weak.state == "complete" and good.answered == digits_set.size == 360
    # the known-answer fingerprint: the same network answers the reference images alike, another does not
    assert len(good.fingerprint) == 16 and good.fingerprint == again.fingerprint != weak.fingerprint
    assert good_ep.input_datatype == "FP32" and good_ep.output_name == "logits" and good_ep.num_labels == 10
    match = match_labels(digits_set.labels, good_ep.labels, {})
    r_good, r_weak = score(good, digits_set, match), score(weak, digits_set, match)
    assert r_good.top1.rate >= 0.95 and r_good.top1.interval[0] > 0.9  # the builder's 97.5%
    assert r_weak.top1.rate < r_good.top1.rate - 0.1
    assert r_good.latency_p50_ms > 0 and r_good.throughput_img_s > 0 and len(r_good.per_class) == 10
    same = paired(good, again, digits_set, match, match, good_ep.labels, good_ep.labels)
    assert same.n == 360 and same.only_a == same.only_b == 0 and same.p_value == 1.0
    diff = paired(good, weak, digits_set, match, match, good_ep.labels, weak_ep.labels)
    assert diff.p_value < 1e-3 and diff.only_a > diff.only_b
    assert diff.disagreements and len(diff.disagreements) <= 24 and diff.confusions


def test_not_a_classifier_is_refused_with_one_line(triton, tmp_path: Path) -> None:
    server, repo = triton
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    for dep, why in ((parse_deployment(f"x={server.url},model=digits"), "give processor="),
                     (spec("x", server.url, repo, extra=",output=last_hidden_state"), "not an FP32 \\[-1, N\\]"),
                     (parse_deployment(f"x={server.url},model=digits,labels={labels},"
                                       f"processor={repo / 'digits' / 'preprocessor_config.json'}"), "2 labels")):
        with pytest.raises(ConfigError, match=why):
            asyncio.run(describe(dep))


async def describe(dep):
    client = OipClient(dep)
    try:
        return await client.describe(10)
    finally:
        await client.close()


# -- endpoints that misbehave in exactly one way ------------------------------------------------------------
class Proxy(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Forwards to the real tritonserver; ``mode`` says the one way it lies."""

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream, self.mode, self.calls = upstream, mode, 0
        self.attempts: dict[str, int] = {}
        self.digest = "a" * 64  # mode "digest": the weights digest it reports (a test swaps the model)

    async def ModelMetadata(self, request, context):  # noqa: N802 - the protocol's name
        async with grpc.aio.insecure_channel(self.upstream) as ch:
            return await service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelMetadata(request, timeout=10)

    async def ModelInfer(self, request, context):  # noqa: N802
        self.calls += 1
        self.attempts[request.id] = self.attempts.get(request.id, 0) + 1
        if self.mode == "busy" and self.attempts[request.id] <= 2:  # two refusals with a RetryInfo hint, then an answer
            info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=20_000_000))
            status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="queue full")
            status.details.add().Pack(info)
            await context.abort_with_status(rpc_status.to_status(status))
        if self.mode == "internal" and self.calls > 5:
            await context.abort(grpc.StatusCode.INTERNAL, "model crashed")
        if self.mode == "slow":
            await asyncio.sleep(0.05)
        if self.mode == "down-later" and self.calls > 40:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        async with grpc.aio.insecure_channel(self.upstream) as ch:
            reply = await service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=10)
        if self.mode == "digest":
            reply.parameters["weights_digest"].string_param = self.digest
        if self.mode == "wrong-shape" and self.calls > 3:
            reply.outputs[0].shape[1] = 9
            reply.raw_output_contents[0] = reply.raw_output_contents[0][:-4]
        return reply


class ProxyServer:
    """A :class:`Proxy` as a server for ``conftest.InProcessServer`` (its own event loop thread)."""

    def __init__(self, proxy: Proxy) -> None:
        self.server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(proxy, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float, drain_delay: float = 0) -> None:
        await self.server.stop(grace)

    @classmethod
    def create(cls, proxy: Proxy) -> tuple[ProxyServer, int]:
        server = cls(proxy)
        return server, server.port


async def through_proxy(mode: str, upstream: str, repo: Path, eval_set, **kw):
    server = grpc.aio.server()
    proxy = Proxy(upstream, mode)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(proxy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return (await measure(spec(mode, f"127.0.0.1:{port}", repo), eval_set, **kw))[0], proxy
    finally:
        await server.stop(0)


@pytest.mark.parametrize("mode,state", [("wrong-shape", "contradicted"), ("internal", "contradicted"),
                                        ("down-later", "partial"), ("busy", "complete")])
def test_misbehaving_endpoints(triton, digits_set, mode: str, state: str) -> None:
    server, repo = triton
    run, proxy = asyncio.run(through_proxy(mode, server.url, repo, digits_set))
    assert run.state == state, run.reason
    if state == "contradicted":
        assert not run.top and run.reason  # what was seen is shown; no accuracy pretends to exist
        assert ("[1, 9]" in run.reason) if mode == "wrong-shape" else ("INTERNAL" in run.reason)
    if mode == "down-later":
        assert 0 < run.answered < digits_set.size and run.not_measured == digits_set.size - run.answered
        assert "UNAVAILABLE" in run.reason
    if mode == "busy":
        # every refusal was retried, the known-answer reference images' too
        assert run.answered == digits_set.size and run.retries == 2 * (digits_set.size + REFERENCE_COUNT)


def test_down_and_slow_endpoints_are_unavailable(triton, digits_set) -> None:
    server, repo = triton
    run, _ = asyncio.run(measure(spec("down", f"127.0.0.1:{_free_port()}", repo), digits_set, budget_s=5))
    assert run.state == "unavailable" and "UNAVAILABLE" in run.reason and run.not_measured == digits_set.size
    run, _ = asyncio.run(through_proxy("slow", server.url, repo, digits_set, budget_s=2.0, concurrency=1))
    assert run.state == "partial" and 0 < run.answered < digits_set.size and run.reason == "budget exhausted"
    assert run.not_measured == digits_set.size - run.answered
    # What a run cut short measured is the seeded, label-stratified sample: every label in the set's
    # proportions (the folder's path order would have measured label 0 only).
    answered = Counter(next(i.label for i in digits_set.images if i.path == path) for path in run.top)
    sizes = Counter(i.label for i in digits_set.images)
    assert run.answered >= 10 and set(answered) == set(sizes), answered
    for label, n in sizes.items():
        assert abs(answered[label] - run.answered * n / digits_set.size) <= 2, (answered, run.answered)
