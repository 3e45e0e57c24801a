"""OpenTelemetry tracing: off by default, on by the standard OTEL_* variables, spans exported over
OTLP/gRPC to a receiver inside the test, the caller's trace continued, no spans for health checks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from conftest import InProcessServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from otlp_receiver import OtlpReceiver, ReceivedSpan
from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from services.common import tracing
from services.common.batcher import MicroBatcher
from services.common.logs import JsonFormatter
from services.gateway.cache import ProbeCache
from services.ranker.config import RankerConfig
from services.ranker.server import create_server as create_ranker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)


@pytest.fixture()
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from the machine running the tests."""
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture()
def traced(clean_env: pytest.MonkeyPatch, receiver: OtlpReceiver) -> Iterator[tuple[tracing.Tracing, OtlpReceiver]]:
    """Tracing on in this process, exporting to the receiver; released (flushed) at the end."""
    for key, value in receiver.env().items():
        clean_env.setenv(key, value)
    active = tracing.acquire("versus-test")
    assert active is not None
    try:
        yield active, receiver
    finally:
        tracing.release(active)


def exporter_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]


def ranker_server(tmp_path: Path) -> InProcessServer:
    return InProcessServer(create_ranker, RankerConfig.from_env(
        {}, db=f"sqlite:///{tmp_path / 'r.db'}", port=0, metrics_port=0, host="127.0.0.1", metrics_host="127.0.0.1",
        drain_delay_s=0.0, log_format="text", bootstrap_rounds=50))


def call_ranker(srv: InProcessServer) -> None:
    """Health checks and reflection (never traced), then two traced RPCs carrying the caller's context."""
    with srv.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for _ in range(3):
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        stub = ranker_pb2_grpc.RankerServiceStub(ch)
        stub.ListModels(ranker_pb2.ListModelsRequest(), timeout=30, metadata=TRACEPARENT)
        stub.RecordMatch(ranker_pb2.RecordMatchRequest(
            model_a="stable-diffusion-3.5-large", model_b="stable-diffusion-3.5-medium",
            outcome=ranker_pb2.OUTCOME_A_WINS, task="text-to-image", idempotency_key="k1"),
            timeout=30, metadata=TRACEPARENT)


# -- configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # no endpoint: off
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "TRUE "}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "false"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
])
def test_only_an_otlp_endpoint_turns_tracing_on(env: dict[str, str], on: bool) -> None:
    assert tracing.TracingSettings.from_env(env).enabled is on


def test_service_name_defaults_per_service_and_the_standard_variable_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    first = tracing.Tracing("versus-vit")
    clean_env.setenv("OTEL_SERVICE_NAME", "vit-eu-1")
    second = tracing.Tracing("versus-vit")
    clean_env.setenv("OTEL_TRACES_SAMPLER", "always_off")
    third = tracing.Tracing("versus-vit")
    try:
        assert (first.service_name, second.service_name) == ("versus-vit", "vit-eu-1")
        assert third.provider.sampler.get_description() == "AlwaysOffSampler"
    finally:
        for t in (first, second, third):
            t.shutdown()


def test_health_reflection_and_oip_liveness_are_never_traced() -> None:
    from services.common.interceptors import open_rpc

    assert open_rpc("/grpc.health.v1.Health/Check") and open_rpc("/grpc.health.v1.Health/Watch")
    assert open_rpc("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    for rpc in ("ServerLive", "ServerReady", "ModelReady"):
        assert open_rpc(f"/inference.GRPCInferenceService/{rpc}")
    assert not open_rpc("/inference.GRPCInferenceService/ModelInfer")
    assert not open_rpc("/versus.vit.v1.VitService/Classify")


# -- a real server ------------------------------------------------------------------------------------
def test_off_by_default_no_provider_and_no_exporter_thread(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("OTEL_SERVICE_NAME", "ignored")  # naming a service alone turns nothing on
    with ranker_server(tmp_path) as srv:
        assert srv.server.tracing is None and not tracing.enabled()
        call_ranker(srv)
        assert exporter_threads() == []
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nothing installed globally


def test_sdk_disabled_wins_over_an_endpoint(clean_env: pytest.MonkeyPatch, receiver: OtlpReceiver,
                                            tmp_path: Path) -> None:
    for key, value in receiver.env().items():
        clean_env.setenv(key, value)
    clean_env.setenv("OTEL_SDK_DISABLED", "true")
    with ranker_server(tmp_path) as srv:
        assert srv.server.tracing is None
        call_ranker(srv)
        assert exporter_threads() == []
    assert receiver.received() == []


def test_rpc_spans_continue_the_callers_trace_and_health_checks_make_none(
        clean_env: pytest.MonkeyPatch, receiver: OtlpReceiver, tmp_path: Path) -> None:
    for key, value in receiver.env().items():
        clean_env.setenv(key, value)
    with ranker_server(tmp_path) as srv:
        assert srv.server.tracing is not None and exporter_threads()
        call_ranker(srv)
    assert exporter_threads() == []  # stopping the server flushed and stopped the exporter
    spans = receiver.wait_for(lambda s: len(s) >= 3, timeout_s=10)
    by_name = {s.name: s for s in spans}
    assert not [s.name for s in spans if "Health" in s.name or "Reflection" in s.name]
    listed = by_name["/versus.ranker.v1.RankerService/ListModels"]
    record = by_name["/versus.ranker.v1.RankerService/RecordMatch"]
    assert (listed.trace_id, listed.parent_id, listed.service) == (TRACE_ID, PARENT_ID, "versus-ranker")
    assert listed.kind == 2  # SPAN_KIND_SERVER
    insert = by_name["INSERT matches"]  # the DB write, inside the RPC's span
    assert (insert.trace_id, insert.parent_id) == (TRACE_ID, record.span_id)
    assert insert.attributes["db.system.name"] == "sqlite" and insert.attributes["duplicate"] is False


def test_oip_liveness_and_readiness_make_no_spans_but_inference_does(
        clean_env: pytest.MonkeyPatch, receiver: OtlpReceiver, vit_tiny_dir: Path) -> None:
    from tritonclient.grpc import service_pb2 as oip
    from tritonclient.grpc import service_pb2_grpc as oip_grpc

    from services.vit.config import VitConfig
    from services.vit.server import create_server as create_vit

    for key, value in receiver.env().items():
        clean_env.setenv(key, value)
    config = VitConfig.from_env({}, model=str(vit_tiny_dir), port=0, metrics_port=0, host="127.0.0.1",
                                metrics_host="127.0.0.1", drain_delay_s=0.0, log_format="text", torch_threads=1)
    with InProcessServer(create_vit, config) as srv, srv.channel() as ch:
        stub = oip_grpc.GRPCInferenceServiceStub(ch)
        for _ in range(2):
            assert stub.ServerLive(oip.ServerLiveRequest(), timeout=10, metadata=TRACEPARENT).live
            assert stub.ServerReady(oip.ServerReadyRequest(), timeout=10, metadata=TRACEPARENT).ready
            assert stub.ModelReady(oip.ModelReadyRequest(name="vit"), timeout=10, metadata=TRACEPARENT).ready
        stub.ModelMetadata(oip.ModelMetadataRequest(name="vit"), timeout=10, metadata=TRACEPARENT)
    names = {s.name for s in receiver.wait_for(lambda s: len(s) >= 1, timeout_s=10)}
    assert names == {"/inference.GRPCInferenceService/ModelMetadata"}


# -- spans of the shared runtime ----------------------------------------------------------------------
def test_json_logs_carry_the_trace_id_only_when_tracing_is_on(clean_env: pytest.MonkeyPatch,
                                                              receiver: OtlpReceiver) -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "hello", None, None)
    assert "trace_id" not in json.loads(JsonFormatter().format(record))
    for key, value in receiver.env().items():
        clean_env.setenv(key, value)
    active = tracing.acquire("versus-test")
    try:
        with active.tracer.start_as_current_span("rpc") as span:
            doc = json.loads(JsonFormatter().format(record))
        ctx = span.get_span_context()
        assert (doc["trace_id"], doc["span_id"]) == (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
        assert "trace_id" not in json.loads(JsonFormatter().format(record))  # outside a span
    finally:
        tracing.release(active)


def _by_name(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def test_one_batch_of_two_callers_belongs_to_the_first_and_links_the_other(traced) -> None:
    active, receiver = traced

    def run_batch(items: list[int]) -> list[int]:
        with tracing.span("forward", batch_size=len(items)):  # on the executor thread, inside the batch span
            return [i * 2 for i in items]

    async def main() -> dict[str, str]:
        batcher = MicroBatcher(run_batch, ThreadPoolExecutor(1), model="m", max_batch_size=4, max_queue=8,
                               max_wait_ms=300)
        batcher.start()

        async def caller(name: str, value: int) -> str:
            with active.tracer.start_as_current_span(name) as root:
                assert [r for r, _ in await batcher.submit([value])] == [value * 2]
            return format(root.get_span_context().trace_id, "032x")

        try:
            a, b = await asyncio.gather(caller("a", 1), caller("b", 2))
        finally:
            await batcher.close()
        return {"a": a, "b": b}

    traces = asyncio.run(main())
    active.provider.force_flush()
    spans = receiver.wait_for(lambda s: len(s) >= 6, timeout_s=10)
    (batch,) = _by_name(spans, "batch")
    assert batch.attributes["batch_size"] == 2 and batch.trace_id == traces["a"]
    assert [t for t, _ in batch.links] == [traces["b"]]
    assert {s.trace_id for s in _by_name(spans, "queue wait")} == {traces["a"], traces["b"]}
    (forward,) = _by_name(spans, "forward")
    assert forward.parent_id == batch.span_id


def test_a_shared_probe_run_is_in_the_first_callers_trace_and_linked_from_the_others(traced) -> None:
    active, receiver = traced

    async def main() -> dict[str, str]:
        cache: ProbeCache[str] = ProbeCache(60.0, SimpleNamespace(labels=lambda *a: SimpleNamespace(inc=lambda: 0)))
        runs = []

        async def probe() -> str:
            runs.append(1)
            with tracing.span("downstream call"):
                await asyncio.sleep(0.2)
            return "seen"

        async def comparison(name: str, delay: float) -> tuple[str, str]:
            await asyncio.sleep(delay)
            with active.tracer.start_as_current_span(name) as root:
                value, how = await cache.get("k", "classify", probe, live=True, ok=lambda _v: True)
            assert value == "seen"
            return format(root.get_span_context().trace_id, "032x"), how

        (a, how_a), (b, how_b) = await asyncio.gather(comparison("a", 0), comparison("b", 0.05))
        assert (how_a, how_b, len(runs)) == ("run", "shared", 1)
        return {"a": a, "b": b}

    traces = asyncio.run(main())
    active.provider.force_flush()
    spans = receiver.wait_for(lambda s: len(s) >= 5, timeout_s=10)
    (run,) = _by_name(spans, "probe")
    (shared,) = _by_name(spans, "probe (shared)")
    (call,) = _by_name(spans, "downstream call")
    assert run.trace_id == traces["a"] and call.parent_id == run.span_id
    assert shared.trace_id == traces["b"] and shared.links == ((traces["a"], run.span_id),)


# -- four real processes ------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_live_comparison_is_one_trace_across_the_four_services(
        receiver: OtlpReceiver, vit_tiny_dir: Path, sd35_dirs: dict[str, Path], adapter_root: Path,
        tmp_path: Path) -> None:
    from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    from versus_cli.launch import ServiceProcess

    env = {**receiver.env(), "OTEL_SDK_DISABLED": "false"}
    common = ["--torch-threads", "1", "--drain-delay-s", "0"]
    services = {
        "vit": ServiceProcess("vit", ["--model", str(vit_tiny_dir), *common], env=env, log_path=tmp_path / "vit.log"),
        "sd35": ServiceProcess("sd35", [*(a for v, p in sd35_dirs.items() for a in ("--model", f"{v}={p}")),
                                        "--adapter-root", str(adapter_root), "--default-size", "64", *common],
                               env=env, log_path=tmp_path / "sd35.log"),
        "ranker": ServiceProcess("ranker", ["--db", f"sqlite:///{tmp_path / 'r.db'}", "--drain-delay-s", "0"],
                                 env=env, log_path=tmp_path / "ranker.log"),
    }
    try:
        for svc in services.values():
            svc.launch()
        for svc in services.values():
            svc.wait_ready(timeout_s=300)
        services["gateway"] = ServiceProcess("gateway", [
            "--vit", services["vit"].target, "--sd35", services["sd35"].target, "--ranker", services["ranker"].target,
            "--lora-probe-path", "loras/example.safetensors", "--imagenet-classes", "tench", "--images-per-class",
            "1", "--probe-size", "64", "--http-port", "-1", "--drain-delay-s", "0"], env=env,
            log_path=tmp_path / "gateway.log").start()
        request = gateway_pb2.CompareRequest(
            model_ids=["vit-base-patch16-224", "stable-diffusion-3.5-large"],
            probes=gateway_pb2.ProbeOptions(live=True, head_to_head=True, record_matches=True))
        with grpc.insecure_channel(services["gateway"].target) as ch:
            reply = gateway_pb2_grpc.GatewayServiceStub(ch).Compare(request, timeout=600, metadata=TRACEPARENT)
        assert reply.comparison.probes_run > 0
    finally:
        codes = {name: svc.stop() for name, svc in reversed(list(services.items())) if svc.started}
    assert set(codes.values()) == {0}  # each flushed its spans while draining
    spans = receiver.received()
    ours = [s for s in spans if s.trace_id == TRACE_ID]
    assert {s.service for s in ours} == {"versus-gateway", "versus-vit", "versus-sd35", "versus-ranker"}
    assert not [s.name for s in spans if "Health" in s.name]  # wait_serving polled every service's health
    (compare,) = [s for s in ours if s.name == "/versus.gateway.v1.GatewayService/Compare"]
    assert compare.parent_id == PARENT_ID
    names = {(s.service, s.name) for s in ours}
    for expected in [("versus-gateway", "probe"), ("versus-vit", "/versus.vit.v1.VitService/Classify"),
                     ("versus-vit", "queue wait"), ("versus-vit", "batch"), ("versus-vit", "decode"),
                     ("versus-vit", "forward"), ("versus-sd35", "queue wait"), ("versus-sd35", "generate"),
                     ("versus-sd35", "encode"), ("versus-ranker", "INSERT matches")]:
        assert expected in names, expected
    assert any(name == "step" for s in ours if s.name == "generate" for name, _ in s.events)
    # every server span in the trace hangs under a gateway client span (context propagated per call)
    client_ids = {s.span_id for s in ours if s.service == "versus-gateway" and s.kind == 3}
    servers = [s for s in ours if s.kind == 2 and s.service != "versus-gateway"]
    assert servers and all(s.parent_id in client_ids for s in servers)
    out = os.environ.get("VERSUS_TRACE_TREE")
    if out:
        from otlp_receiver import span_tree

        Path(out).write_text(span_tree(spans, TRACE_ID) + "\n")
