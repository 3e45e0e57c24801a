"""Observability, checked with the real tools: promtool checks and unit-tests the alert rules (and a broken rule
fails its test); a real Prometheus (Debian's package) scrapes the four live services while they work, loads the
rules and evaluates them without error, and the dashboard's main panels return data; every metric name the
dashboard and the alerts use appears in a live service's /metrics."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from conftest import InProcessServer, encode, require, sample_image, scrape_metrics
from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common import registry

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "k8s" / "components" / "prometheus-operator"
RULE = MONITORING / "prometheusrule.yaml"
RULE_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "versus-dashboard.json"
#: Written by Prometheus itself for every target, never by a service.
SYNTHETIC = {"up"}
#: Exported only where torch sees a GPU (services/torch_runtime.py); checked in test_gpu_metric_names.
GPU_ONLY = {"versus_gpu_memory_bytes"}
#: Exported only by a gateway with routes declared (the dashboard's "Shadow routes" row and the route alerts);
#: checked against the gateway's own registration, and on series it exports, in tests/test_deploy_routes.py.
ROUTES_ROW = "Shadow routes"
ROUTE_PREFIX = "versus_route_"
RATE_INTERVAL = "5m"  # Prometheus starts with the test: a 5-minute window holds all its traffic

needs_promtool = pytest.mark.usefixtures("requires_promtool")  # conftest: fails naming it, never skips


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULE.read_text())["spec"]["groups"] for r in g["rules"] if "alert" in r]


def dashboard_panels() -> list[tuple[str, str, list[str]]]:
    """(row title, panel title, exprs) for every panel."""
    out, row = [], ""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        out.append((row, panel["title"], [t["expr"] for t in panel["targets"]]))
    return out


_NAME = re.compile(r"\b(?:grpc_server_[a-z_]+|versus_[a-z0-9_]+|up)\b")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (strings such as label values removed first)."""
    return set(_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))


def used_names() -> set[str]:
    exprs = [r["expr"] for r in alert_rules()] + [e for _, _, es in dashboard_panels() for e in es]
    return set().union(*(metric_names(e) for e in exprs))


def for_prometheus(expr: str) -> str:
    """A dashboard expression as Grafana sends it, with its variables filled in."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$namespace", "versus")


def write_rules(directory: Path, rule_text: str | None = None) -> Path:
    """The PrometheusRule's spec as a plain rule file next to a copy of the promtool tests."""
    spec = yaml.safe_load(rule_text or RULE.read_text())["spec"]
    rules = directory / "alerts.rules.yaml"
    rules.write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(RULE_TESTS, directory / RULE_TESTS.name)
    return rules


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# -- the rules, offline ----------------------------------------------------------------------------------------------
@needs_promtool
def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    write_rules(tmp_path)
    result = promtool("check", "rules", "alerts.rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_issue_s_alerts_exist() -> None:
    """Error rate, queue saturation, p95 latency, pod not ready, SD3.5 cancellations."""
    rules = {r["alert"]: r for r in alert_rules()}
    assert {"VersusHighErrorRate", "VersusQueueSaturated", "VersusVitLatencyP95High", "VersusCompareLatencyP95High",
            "VersusModelNotReady", "VersusTargetDown", "VersusSd35CancellationsHigh", "VersusRouteViolated",
            "VersusRouteRolledBack", "VersusRouteMirrorsDropping"} == set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["for"], name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name


@needs_promtool
def test_promtool_unit_tests_pass_and_cover_every_alert(tmp_path: Path) -> None:
    write_rules(tmp_path)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    fires, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert fires == names and quiet == names, "each alert needs a firing and a quiet case"


@needs_promtool
@pytest.mark.parametrize(("alert", "before", "after"), [
    ("VersusHighErrorRate", "            ) > 0.05\n", "            ) > 0.5\n"),
    ("VersusModelNotReady", "(versus_model_ready) == 0", "(versus_model_ready) == 1"),
    ("VersusSd35CancellationsHigh", ") > 0.25", ") > 0.75"),
    ("VersusRouteViolated", "(versus_route_decision) == 2", "(versus_route_decision) >= 1"),
    ("VersusRouteMirrorsDropping", '{reason!="shutdown"}', ""),
])
def test_a_broken_rule_fails_its_unit_test(tmp_path: Path, alert: str, before: str, after: str) -> None:
    """The unit tests can fail: the same tests on a rule with a wrong threshold or condition."""
    text = RULE.read_text()
    assert text.count(before) == 1
    write_rules(tmp_path, text.replace(before, after))
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0 and f"alertname: {alert}" in result.stdout + result.stderr


def test_dashboard_is_grafana_json_on_the_namespace_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "versus-overview" and board["schemaVersion"] >= 36
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for row, title, exprs in dashboard_panels():
        assert exprs and all('namespace=~"$namespace"' in e for e in exprs), f"{row}/{title}"
    overview = [t for row, t, _ in dashboard_panels() if row == "Overview"]
    assert len(overview) >= 5


def test_gpu_metric_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU-only names the dashboard uses are the ones services/torch_runtime.py registers. Without a GPU,
    torch.cuda is stood in for (one device) so the real registration code runs."""
    import torch

    from services.common.metrics import Metrics
    from services.torch_runtime import watch_gpu_memory

    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: 1024)
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 2048)
    metrics = Metrics()
    assert watch_gpu_memory(metrics) is not None
    from prometheus_client import generate_latest

    exported = {line.split("{")[0] for line in generate_latest(metrics.registry).decode().splitlines()
                if line and not line.startswith("#")}
    assert GPU_ONLY & used_names() <= exported


# -- live: four services at work, scraped by a real Prometheus -------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """Debian's prometheus on 127.0.0.1, scraping ``targets`` ({job: [(pod, metrics_port)]}) every second."""

    def __init__(self, directory: Path, targets: dict[str, list[tuple[str, int]]], rules: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = [{"job_name": job, "scrape_interval": "1s", "scrape_timeout": "900ms",
                 "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": "versus", "pod": pod}}
                                    for pod, port in pods]}
                for job, pods in targets.items()]
        config = {"global": {"evaluation_interval": "1s"}, "rule_files": [str(rules)], "scrape_configs": jobs}
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.cmd = ["prometheus", f"--config.file={directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn"]
        self.log = directory / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Prometheus:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        self.wait(lambda: self.get("/-/ready", raw=True), 60, "ready")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def get(self, path: str, raw: bool = False) -> object:
        try:
            body = urllib.request.urlopen(self.url + path, timeout=10).read().decode()
        except OSError:
            return None
        return body if raw else json.loads(body)

    def query(self, expr: str) -> list[dict]:
        reply = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert reply is not None and reply["status"] == "success", f"{expr}: {reply}"
        return reply["data"]["result"]

    def wait(self, condition, timeout_s: float, what: str) -> object:  # noqa: ANN001 - any callable
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            value = condition()
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"prometheus: not {what} after {timeout_s:.0f}s; log: {self.log.read_text()[-2000:]}")


def _png(seed: int) -> common_pb2.Image:
    return common_pb2.Image(data=encode(sample_image(seed)))


def _vit_traffic(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = vit_pb2_grpc.VitServiceStub(channel)
        for seed in range(4):
            stub.Classify(vit_pb2.ClassifyRequest(images=[_png(seed), _png(seed + 10)], top_k=3), timeout=60)
        stub.Embed(vit_pb2.EmbedRequest(images=[_png(1)]), timeout=60)
        with pytest.raises(grpc.RpcError) as err:
            stub.Classify(vit_pb2.ClassifyRequest(images=[]), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _overload(target: str) -> int:
    """Concurrent requests against a vit whose queue holds 4 images: some are refused (queue_full)."""
    request = vit_pb2.ClassifyRequest(images=[_png(i) for i in range(4)], top_k=1)
    with grpc.insecure_channel(target) as channel:
        stub = vit_pb2_grpc.VitServiceStub(channel)

        def one(_: int) -> grpc.StatusCode:
            try:
                stub.Classify(request, timeout=60)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(one, range(24)))
    return codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)


def _cancel_a_generation(target: str) -> None:
    """Start a long generation and walk away after its first progress event."""
    with grpc.insecure_channel(target) as channel:
        stub = sd35_pb2_grpc.Sd35ServiceStub(channel)
        call = stub.Generate(sd35_pb2.GenerateRequest(prompt="a lighthouse", variant=sd35_pb2.VARIANT_LARGE,
                                                      width=128, height=128, steps=100, seed=1), timeout=120)
        for event in call:
            if event.HasField("progress"):
                call.cancel()
                break


def _compare(target: str, timeout_s: float = 300) -> gateway_pb2.Comparison:
    with grpc.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        request = gateway_pb2.CompareRequest(model_ids=["vit-base-patch16-224", "stable-diffusion-3.5-large"],
                                             probes=gateway_pb2.ProbeOptions(live=True, imagenet_classes=["tench"],
                                                                             images_per_class=1))
        return stub.Compare(request, timeout=timeout_s).comparison


@pytest.fixture(scope="module")
def live(gateway_stack, vit_tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The four services (gateway_stack) plus a vit with a 4-image queue and a gateway whose vit is gone, all
    working while Prometheus scrapes them; yields what the test needs."""
    require("Prometheus", shutil.which("prometheus") is not None,
            "apt-get install prometheus (make setup does, as root)")
    from services.gateway.server import create_server as create_gateway
    from services.vit.config import VitConfig
    from services.vit.server import create_server as create_vit

    common = {"port": 0, "metrics_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1", "drain_delay_s": 0.0,
              "log_format": "text"}
    tmp = tmp_path_factory.mktemp("prometheus")
    rules = write_rules(tmp)
    small = VitConfig.from_env({}, model=str(vit_tiny_dir), torch_threads=1, max_queue=4, max_images_per_request=4,
                               max_batch_size=1, **common)
    stack = gateway_stack
    orphan_config = stack.gateway_config(http_port=-1, vit="127.0.0.1:1", sd35="")  # nothing listens on port 1
    with InProcessServer(create_vit, small) as busy_vit, InProcessServer(create_gateway, orphan_config) as orphan:
        servers = {"vit": [("vit-0", stack.vit), ("vit-small-0", busy_vit)], "sd35": [("sd35-0", stack.sd35)],
                   "ranker": [("ranker-0", stack.ranker)], "gateway": [("gateway-0", stack.gateway),
                                                                       ("gateway-orphan-0", orphan)]}
        targets = {job: [(pod, s.server.metrics_port) for pod, s in pods] for job, pods in servers.items()}
        with Prometheus(tmp, targets, rules) as prom:
            prom.wait(lambda: len([t for t in prom.get("/api/v1/targets")["data"]["activeTargets"]
                                   if t["health"] == "up"]) == 6, 60, "scraping all six targets")
            _vit_traffic(stack.vit.target)
            refused = _overload(busy_vit.target)
            _cancel_a_generation(stack.sd35.target)
            comparison = _compare(stack.gateway.target)
            _compare(orphan.target, timeout_s=120)  # vit unreachable: a downstream error, the comparison still made
            prom.wait(lambda: prom.query("sum(versus_gateway_comparisons_total)")
                      and float(prom.query("sum(versus_gateway_comparisons_total)")[0]["value"][1]) >= 2,
                      60, "seeing both comparisons")
            time.sleep(3)  # a few more scrapes after the traffic, so rates over the last seconds see it
            yield {"prom": prom, "servers": servers, "refused": refused, "comparison": comparison}


def _live_names(servers: dict[str, list[tuple[str, InProcessServer]]]) -> set[str]:
    names: set[str] = set()
    for pods in servers.values():
        for _, server in pods:
            names |= {key.split("{")[0] for key in scrape_metrics(server.server.metrics_port)}
    return names


@pytest.mark.slow
@needs_promtool
def test_every_metric_the_dashboard_and_alerts_use_is_exported_live(live: dict) -> None:
    assert live["refused"] > 0, "the 4-image queue refused nothing: versus_rejected_total not exercised"
    exported = _live_names(live["servers"])
    missing = {n for n in used_names() - SYNTHETIC - GPU_ONLY - exported if not n.startswith(ROUTE_PREFIX)}
    assert not missing, f"used by the dashboard or alerts but no live service exports: {sorted(missing)}"
    assert len(used_names()) >= 20


@pytest.mark.slow
@needs_promtool
def test_prometheus_loads_and_evaluates_every_alert_on_live_series(live: dict) -> None:
    prom = live["prom"]
    groups = prom.get("/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {r["alert"] for r in alert_rules()}
    prom.wait(lambda: all(r.get("lastEvaluation", "").startswith("2") for r in
                          (x for g in prom.get("/api/v1/rules")["data"]["groups"] for x in g["rules"])),
              30, "evaluating every rule")
    for name, rule in {r["name"]: r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]}.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    # Healthy services: nothing about readiness or scraping fires.
    assert not prom.query('ALERTS{alertname=~"VersusTargetDown|VersusModelNotReady"}')
    jobs = "|".join(registry.NAMES)
    assert {s["metric"]["job"] for s in prom.query(f'up{{job=~"{jobs}"}} == 1')} == set(registry.NAMES)


@pytest.mark.slow
@needs_promtool
def test_dashboard_main_panels_return_data(live: dict) -> None:
    prom = live["prom"]
    main = [(title, exprs) for row, title, exprs in dashboard_panels() if row == "Overview"]
    for title, exprs in main:
        for expr in exprs:
            assert prom.query(for_prometheus(expr)), f"'{title}' returns no data: {for_prometheus(expr)}"
    rates = {s["metric"]["grpc_service"]: float(s["value"][1]) for s in prom.query(for_prometheus(main[0][1][0]))}
    assert {"versus.vit.v1.VitService", "versus.sd35.v1.Sd35Service", "versus.ranker.v1.RankerService",
            "versus.gateway.v1.GatewayService"} <= set(rates)
    refused = prom.query(for_prometheus(next(e for t, es in main if t.startswith("Refused") for e in es)))
    assert any(s["metric"].get("reason") == "queue_full" for s in refused)


@pytest.mark.slow
@needs_promtool
def test_the_rest_of_the_dashboard_returns_data_where_its_work_happened(live: dict) -> None:
    """Every other panel too, except the GPU one on a machine without a GPU and the routes row (no route here)."""
    prom = live["prom"]
    empty = []
    for row, title, exprs in dashboard_panels():
        if row in ("Overview", ROUTES_ROW) or any(metric_names(e) & GPU_ONLY for e in exprs):
            continue
        if not all(prom.query(for_prometheus(e)) for e in exprs):
            empty.append(f"{row}/{title}")
    assert not empty, f"panels with no data after their work ran: {empty}"


# -- autoscaling: the triggers' queries on live series ------------------------------------------------------------
def _scalar(prom: Prometheus, expr: str) -> float:
    return sum(float(s["value"][1]) for s in prom.query(expr))


def _wait_value(prom: Prometheus, expr: str, holds, timeout_s: float) -> float:  # noqa: ANN001 - a predicate
    """Poll ``expr`` until its value satisfies ``holds``; returns that value."""
    seen: list[float] = []

    def check() -> bool:
        seen.append(_scalar(prom, expr))
        return holds(seen[-1])

    prom.wait(check, timeout_s, f"{expr} as wanted")
    return seen[-1]


def _keep_vit_busy(target: str, stop: threading.Event) -> None:
    """Four images a request through a batch size of 1 (vit-small-0): images wait in the batcher's queue."""
    request = vit_pb2.ClassifyRequest(images=[_png(i) for i in range(4)], top_k=1)
    with grpc.insecure_channel(target) as channel:
        stub = vit_pb2_grpc.VitServiceStub(channel)
        while not stop.is_set():
            try:
                stub.Classify(request, timeout=60)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                stop.wait(0.05)


def _hold_generations(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every SD3.5 generation stops after its first denoising step until the returned event is set: the real
    pipeline and queue, held, so that the queued work stays queued until Prometheus has seen it (a tiny
    generation outlives no scrape interval by itself)."""
    from services.sd35.engine import Sd35Runner, StepHooks

    release = threading.Event()
    generate = Sd35Runner.generate

    def held(self, p, hooks=None):
        def on_step(step: int, total: int, elapsed_ms: float) -> None:
            release.wait(timeout=300)  # bounded: a failed test never hangs the worker thread for good
            if hooks is not None:
                hooks.on_step(step, total, elapsed_ms)

        return generate(self, p, StepHooks(on_step, hooks.on_preview if hooks else None))

    monkeypatch.setattr(Sd35Runner, "generate", held)
    return release


@pytest.mark.slow
@needs_promtool
def test_the_autoscaling_queries_rise_under_load(live: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PromQL of the KEDA ScaledObjects (and the prometheus-adapter rule, its template filled for the pods)
    rises in a real Prometheus while vit and sd35 queue work, and falls back when the work is done."""
    from test_autoscaling import adapter_query, keda_query

    prom, servers = live["prom"], live["servers"]
    vit_query, sd35_query = keda_query("vit"), keda_query("sd35")
    per_pod = adapter_query("versus_queue_depth", [pod for pods in servers.values() for pod, _ in pods])
    for expr in (vit_query, sd35_query):
        _wait_value(prom, expr, lambda v: v == 0, 60)
    stop = threading.Event()
    release = _hold_generations(monkeypatch)
    busy_vit = dict(servers["vit"])["vit-small-0"]
    sd35 = dict(servers["sd35"])["sd35-0"]
    short = sd35_pb2.GenerateRequest(prompt="a lighthouse", variant=sd35_pb2.VARIANT_LARGE, width=256, height=256,
                                     steps=2, seed=3)
    with grpc.insecure_channel(sd35.target) as channel, concurrent.futures.ThreadPoolExecutor(3) as pool:
        clients = [pool.submit(_keep_vit_busy, busy_vit.target, stop) for _ in range(3)]
        stub = sd35_pb2_grpc.Sd35ServiceStub(channel)
        generations = [stub.Generate(short, timeout=300) for _ in range(2)]  # one runs (held), one waits
        try:
            assert _wait_value(prom, vit_query, lambda v: v > 0, 60) > 0
            assert _wait_value(prom, sd35_query, lambda v: v >= 1, 60) >= 1
            rising = {s["metric"]["pod"] for s in prom.query(per_pod) if float(s["value"][1]) > 0}
            assert rising & {"vit-small-0", "sd35-0"}, f"the adapter's per-pod query: {prom.query(per_pod)}"
        finally:
            stop.set()
            release.set()
        for call in generations:  # released, both finish: the queue drains by itself
            assert [e for e in call if e.HasField("result")], "a released generation ends with its images"
        for client in clients:
            client.result(timeout=120)
    for expr in (vit_query, sd35_query):
        _wait_value(prom, expr, lambda v: v == 0, 60)
