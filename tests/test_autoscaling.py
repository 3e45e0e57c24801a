"""Autoscaling on queue depth: the two gauges it reads move under real load on a live /metrics and fall back when
the load ends; the KEDA component replaces the CPU HPAs of vit and sd35 with ScaledObjects that validate against
KEDA's CRD schema (the pinned @kubernetes-models/keda); the prometheus-adapter rules and the hpa-queue-depth
component serve the same signal, with the same targets, to plain HPAs. (tests/test_observability.py evaluates the
triggers' PromQL in a real Prometheus while the services work.)"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import InProcessServer, encode, metric_sum, sample_image
from versus.common.v1 import common_pb2
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common import registry

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KEDA = K8S / "components" / "keda-queue-depth"
ADAPTER_VALUES = ROOT / "deploy" / "prometheus-adapter" / "values.yaml"
NODE_TOOLS = ROOT / ".tools"
MODEL_SERVERS = registry.MODEL_SERVERS
SERVER = {"port": 0, "metrics_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1", "drain_delay_s": 0.0,
          "log_format": "text"}

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")


def gauges(server: InProcessServer) -> tuple[float, float]:
    """(versus_queue_depth, versus_work_in_flight) summed over the server's models, read from its /metrics."""
    m = server.metrics()
    return metric_sum(m, "versus_queue_depth"), metric_sum(m, "versus_work_in_flight")


def watch(server: InProcessServer, until: Callable[[float, float], bool], timeout_s: float) -> tuple[float, float]:
    """Scrape until ``until(depth, in_flight)`` holds; the gauges then. Fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        depth, in_flight = gauges(server)
        if until(depth, in_flight):
            return depth, in_flight
        assert time.monotonic() < deadline, f"gauges stuck at queue depth {depth}, in flight {in_flight}"
        time.sleep(0.01)


# -- the gauges under load -------------------------------------------------------------------------------------------
def test_admission_publishes_the_work_it_holds() -> None:
    from services.common.admission import Admission, QueueFull
    from services.common.metrics import Metrics

    metrics = Metrics()
    admission = Admission(4, model="m", metrics=metrics)
    value = lambda: metrics.registry.get_sample_value("versus_work_in_flight", {"model": "m"})  # noqa: E731
    with admission.hold(3):
        assert value() == 3
        with pytest.raises(QueueFull):
            admission.acquire(2)  # refused work is not in flight
        assert value() == 3
    assert value() == 0



def test_vit_gauges_rise_under_load_and_fall_after(vit_tiny_dir: Path) -> None:
    from services.vit.config import VitConfig
    from services.vit.server import create_server

    config = VitConfig.from_env({}, model=str(vit_tiny_dir), torch_threads=1, max_batch_size=1, max_queue=64,
                                max_images_per_request=8, **SERVER)
    request = vit_pb2.ClassifyRequest(images=[common_pb2.Image(data=encode(sample_image(i))) for i in range(8)])
    stop = threading.Event()
    with InProcessServer(create_server, config) as server:
        assert gauges(server) == (0, 0)

        def client(_: int) -> int:
            with server.channel() as channel:
                stub, calls = vit_pb2_grpc.VitServiceStub(channel), 0
                while not stop.is_set():
                    stub.Classify(request, timeout=60)
                    calls += 1
                return calls

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(client, i) for i in range(4)]
            try:
                # Eight images per request through a batch size of 1: most wait in the batcher's queue.
                depth, in_flight = watch(server, lambda d, f: d >= 4 and f >= 8, 60)
            finally:
                stop.set()
            assert all(c.result(timeout=120) > 0 for c in clients)
        assert in_flight >= depth, "queued work is admitted work"
        watch(server, lambda d, f: d == 0 and f == 0, 30)


def test_sd35_gauges_count_waiting_and_running_generations(sd35_dirs: dict[str, Path]) -> None:
    from services.sd35.config import Sd35Config
    from services.sd35.server import create_server

    config = Sd35Config.from_env({}, models=(f"large={sd35_dirs['large']}",), torch_threads=1, max_queue=4, **SERVER)
    with InProcessServer(create_server, config) as server, server.channel() as channel:
        stub = sd35_pb2_grpc.Sd35ServiceStub(channel)
        assert gauges(server) == (0, 0)
        long = sd35_pb2.GenerateRequest(prompt="a lighthouse", variant=sd35_pb2.VARIANT_LARGE, width=256, height=256,
                                        steps=100, seed=1)
        calls = [stub.Generate(long, timeout=120) for _ in range(3)]
        try:
            # One generation on the device, two waiting behind it.
            assert watch(server, lambda d, f: (d, f) == (2, 3), 60) == (2, 3)
        finally:
            for call in calls:
                call.cancel()
        watch(server, lambda d, f: d == 0 and f == 0, 60)


# -- the KEDA component ------------------------------------------------------------------------------------------------
def render(path: Path) -> list[dict]:
    text = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True,
                          timeout=120).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def render_with(overlay: str, component: Path, tmp_path: Path) -> list[dict]:
    """``overlay`` plus ``component``, the way a deployer's own overlay adds it."""
    rel = os.path.relpath
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [rel(K8S / "overlays" / overlay, tmp_path)], "components": [rel(component, tmp_path)]}))
    return render(tmp_path)


def named(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def base_hpas() -> dict[str, dict]:
    return named(render(K8S / "overlays" / "gpu"), "HorizontalPodAutoscaler")


def keda_query(service: str) -> str:
    """The PromQL of ``service``'s ScaledObject trigger, as committed."""
    docs = [d for f in KEDA.rglob("scaledobjects.yaml") for d in yaml.safe_load_all(f.read_text()) if d]
    (trigger,) = named(docs, "ScaledObject")[service]["spec"]["triggers"]
    return trigger["metadata"]["query"]


@needs_kubectl
@pytest.mark.parametrize("overlay", ["gpu", "cpu", "triton"])
def test_keda_component_replaces_the_cpu_hpas_of_the_model_servers(overlay: str, tmp_path: Path) -> None:
    before = named(render(K8S / "overlays" / overlay), "HorizontalPodAutoscaler")
    docs = render_with(overlay, KEDA, tmp_path)
    hpas, scaled = named(docs, "HorizontalPodAutoscaler"), named(docs, "ScaledObject")
    assert set(scaled) == set(MODEL_SERVERS) and not set(hpas) & set(MODEL_SERVERS), "one autoscaler per Deployment"
    assert set(hpas) == set(before) - set(MODEL_SERVERS), "the other HPAs stay"
    deployments = named(docs, "Deployment")
    for name, obj in scaled.items():
        spec, hpa = obj["spec"], before[name]["spec"]
        assert obj["metadata"]["namespace"] == deployments[name]["metadata"]["namespace"] == "versus"
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
        assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue", "per replica"
        query = trigger["metadata"]["query"]
        assert re.fullmatch(rf'sum\(versus_queue_depth\{{namespace="versus", job="{name}"\}}\)', query), query
        assert float(trigger["metadata"]["threshold"]) > 0


@needs_kubectl
def test_keda_per_variant_replaces_the_cpu_hpa_of_each_sd35_variant(tmp_path: Path) -> None:
    """gpu-split-keda: a ScaledObject per Deployment (vit and each SD3.5 variant) on the queue depth of that
    Deployment's own pods, bounds from the HPA it replaces; the gpu-split overlay otherwise unchanged."""
    before = named(render(K8S / "overlays" / "gpu-split"), "HorizontalPodAutoscaler")
    docs = render(K8S / "overlays" / "gpu-split-keda")
    scaled, hpas = named(docs, "ScaledObject"), named(docs, "HorizontalPodAutoscaler")
    variants = {"sd35-large", "sd35-large-turbo", "sd35-medium"}
    assert set(scaled) == {"vit"} | variants and set(hpas) == set(before) - set(scaled) == {"gateway"}
    for name, obj in scaled.items():
        spec, hpa = obj["spec"], before[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name and name in named(docs, "Deployment")
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
        (trigger,) = spec["triggers"]
        assert trigger["metadata"]["query"] == keda_query(name), name
        assert trigger["metadata"]["query"] == f'sum(versus_queue_depth{{namespace="versus", job="{name}"}})'
        assert trigger["metadata"]["threshold"] == keda_query_threshold("vit" if name == "vit" else "sd35")
    # The job a query names is a Service the ServiceMonitor scrapes: each variant's own, selecting its pods only.
    services = named(render_with("gpu-split", K8S / "components" / "prometheus-operator", tmp_path), "Service")
    for name in variants:
        assert services[name]["spec"]["selector"]["app.kubernetes.io/instance"] == name


def keda_query_threshold(service: str) -> str:
    docs = [d for f in KEDA.rglob("scaledobjects.yaml") for d in yaml.safe_load_all(f.read_text()) if d]
    return named(docs, "ScaledObject")[service]["spec"]["triggers"][0]["metadata"]["threshold"]


@needs_kubectl
def test_the_gpu_keda_overlay_is_the_gpu_overlay_with_the_component(tmp_path: Path) -> None:
    # ... and with components/prometheus-operator, whose Prometheus the triggers read.
    gpu = render_with("gpu", K8S / "components" / "prometheus-operator", tmp_path)
    keda = render(K8S / "overlays" / "gpu-keda")
    strip = {("HorizontalPodAutoscaler", n) for n in MODEL_SERVERS}
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, (d for d in gpu if key(d) not in strip))) == sorted(
        map(key, (d for d in keda if d["kind"] != "ScaledObject")))


def keda_validate(docs: list[dict]) -> subprocess.CompletedProcess:
    """The pinned KEDA CRD schema (npm @kubernetes-models/keda, installed by `make setup`) on ``docs``."""
    assert (NODE_TOOLS / "node_modules" / "@kubernetes-models" / "keda").exists(), "run `make setup` (or make tools)"
    return subprocess.run(["node", str(NODE_TOOLS / "validate-keda.mjs")], input=json.dumps(docs),
                          capture_output=True, text=True, timeout=120)


@needs_kubectl
def test_scaled_objects_validate_against_the_keda_crd_schema() -> None:
    scaled = [d for d in render(K8S / "overlays" / "gpu-keda") if d["apiVersion"].startswith("keda.sh/")]
    assert len(scaled) == 2
    result = keda_validate(scaled)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(result.stdout.split("\n")[:-1]) == ["ok ScaledObject/sd35", "ok ScaledObject/vit"]
    # The schema can refuse: a threshold written as a YAML number (KEDA's trigger metadata is strings only).
    broken = json.loads(json.dumps(scaled[0]))
    broken["spec"]["triggers"][0]["metadata"]["threshold"] = 2
    result = keda_validate([broken])
    assert result.returncode == 1 and "threshold must be string" in result.stdout, result.stdout + result.stderr


# -- prometheus-adapter for plain HPAs ---------------------------------------------------------------------------------
def adapter_rules() -> dict[str, dict]:
    return {r["name"]["as"]: r for r in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]}


def test_adapter_rules_serve_the_gauges_per_pod() -> None:
    rules = adapter_rules()
    assert set(rules) == {"versus_queue_depth", "versus_work_in_flight"}
    for name, rule in rules.items():
        assert rule["seriesQuery"] == f'{name}{{namespace!="",pod!=""}}'
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert rule["metricsQuery"] == "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"


def adapter_query(metric: str, pods: list[str]) -> str:
    """The PromQL prometheus-adapter sends for ``metric`` of ``pods`` in namespace versus (its template filled)."""
    template = adapter_rules()[metric]["metricsQuery"]
    matchers = f'namespace="versus",pod=~"{"|".join(pods)}"'
    return template.replace("<<.Series>>", metric).replace("<<.LabelMatchers>>", matchers).replace(
        "<<.GroupBy>>", "pod")


@needs_kubectl
def test_hpa_component_scales_on_the_adapter_metric_with_the_keda_targets(tmp_path: Path) -> None:
    import kubernetes_validate

    docs = render_with("gpu", K8S / "components" / "hpa-queue-depth", tmp_path)
    hpas, before = named(docs, "HorizontalPodAutoscaler"), base_hpas()
    scaled = named(render(K8S / "overlays" / "gpu-keda"), "ScaledObject")
    for name in MODEL_SERVERS:
        kubernetes_validate.validate(hpas[name], "1.33", strict=True)
        (metric,) = hpas[name]["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in adapter_rules()
        assert metric["pods"]["target"]["type"] == "AverageValue"
        threshold = scaled[name]["spec"]["triggers"][0]["metadata"]["threshold"]
        assert metric["pods"]["target"]["averageValue"] == threshold, "the same per-replica target as KEDA's"
        assert {k: v for k, v in hpas[name]["spec"].items() if k != "metrics"} == {
            k: v for k, v in before[name]["spec"].items() if k != "metrics"}
    assert hpas["gateway"] == before["gateway"]
