"""Shadow and canary routes on Kubernetes: the dashboard's "Shadow routes" row and the route alerts read exactly the
series the gateway exports for a route (names and labels); overlays/shadow-kserve puts the gateway in front of two
KServe InferenceServices (KServe's CRD schemas, a headless Service of each one's predictor pods) with a route file
that the gateway's own parser accepts, and isolates the predictors behind it. The overlay's generic checks (schema,
pods, images, env, NetworkPolicies of the Versus services) run with every other overlay in tests/test_deploy.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_deploy import (
    ALL_SOURCES,
    GATEWAY,
    MONITORING,
    PROCESS_ENV,
    ROOT,
    _doc_block,
    allowed,
    by_kind,
    kserve_errors,
    pod_spec,
    render,
    render_dir,
)
from test_observability import (
    DASHBOARD,
    ROUTE_PREFIX,
    ROUTES_ROW,
    alert_rules,
    dashboard_panels,
    for_prometheus,
    metric_names,
)

#: Labels Prometheus' scrape adds to every series (the ServiceMonitors' target labels), besides the gateway's own.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}
ROUTE_ALERTS = {"VersusRouteViolated", "VersusRouteRolledBack", "VersusRouteMirrorsDropping"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_ANNOTATION = re.compile(r"\$labels\.(\w+)")


def gateway_series() -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every route series in the gateway's /metrics text after its routes wing's own code
    set each metric once (the counters, then the gauges from a ranker state)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from versus.ranker.v1 import routes_pb2

    from services.common.metrics import Metrics
    from services.gateway.routes.metrics import RouteMetrics

    metrics = Metrics()
    m = RouteMetrics(metrics)
    m.requests.labels("r", "primary").inc()
    m.mirrored.labels("r").inc()
    m.dropped.labels("r", "queue_full").inc()
    m.pending.labels("r").set(1)
    m.records_lost.labels("r").inc()
    bound = routes_pb2.RouteBound(metric="agreement", op=">=", value=0.99)
    m.state("r", routes_pb2.RouteState(
        pairs=10, agreement=routes_pb2.SequenceInterval(lower=0.9, upper=1.0, estimate=0.95, n=10),
        decisions=[routes_pb2.BoundDecision(bound=bound, state=routes_pb2.DECISION_STATE_HOLDS)], rolled_back=True),
        {("agreement", ">=", 0.99): "agreement >= 0.99"})
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for s in family.samples if s.name.startswith(ROUTE_PREFIX) and not s.name.endswith("_created")]


def exported() -> dict[str, set[str]]:
    """Exported name → label names of every route series the gateway exports."""
    out: dict[str, set[str]] = {}
    for name, labels, _ in gateway_series():
        out.setdefault(name, set()).update(labels)
    assert len(out) == 10, sorted(out)
    return out


def route_queries() -> list[tuple[str, str, str]]:
    """(where, expr, the text that shows its labels: legend or annotations) of the routes row's panels and the
    route alerts."""
    out, row = [], ""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        row = panel["title"] if panel["type"] == "row" else row
        if panel["type"] != "row" and row == ROUTES_ROW:
            out += [(f"{row}/{panel['title']}", t["expr"], t.get("legendFormat", "")) for t in panel["targets"]]
    out += [(r["alert"], r["expr"], " ".join(r["annotations"].values())) for r in alert_rules()
            if r["alert"] in ROUTE_ALERTS]
    return out


def test_the_routes_row_and_alerts_exist() -> None:
    titles = [title for row, title, _ in dashboard_panels() if row == ROUTES_ROW]
    assert len(titles) >= 6, titles
    assert ROUTE_ALERTS <= {r["alert"] for r in alert_rules()}
    used = set().union(*(metric_names(e) for _, e, _ in route_queries()))
    # The list: requests, mirrored, dropped; agreement lower and upper; decision state (+ rollback).
    assert {"versus_route_requests_total", "versus_route_mirrored_total", "versus_route_mirror_dropped_total",
            "versus_route_agreement_lower", "versus_route_agreement_upper", "versus_route_decision",
            "versus_route_rolled_back"} <= used


def test_every_route_series_the_dashboard_and_alerts_read_is_one_the_gateway_exports() -> None:
    """Each metric name is registered by the gateway; each label a query groups by, a legend shows or an alert's
    annotation prints is one of that metric's labels (or one the scrape adds): a renamed metric or label leaves
    a panel silently empty, so it fails here instead."""
    metrics = exported()
    checked = 0
    for where, expr, labelled in route_queries():
        names = metric_names(expr)
        assert names and all(n.startswith(ROUTE_PREFIX) for n in names), f"{where}: {sorted(names)}"
        unknown = names - set(metrics)
        assert not unknown, f"{where}: the gateway exports no {sorted(unknown)}"
        labels = set().union(*(metrics[n] for n in names)) | TARGET_LABELS
        for group in _GROUPING.findall(expr):
            grouped = {g.strip() for g in group.split(",") if g.strip()}
            assert grouped <= labels, f"{where}: groups by {sorted(grouped - labels)}, not labels of {sorted(names)}"
        outer = {g.strip() for g in _GROUPING.findall(expr)[0].split(",")} if _GROUPING.search(expr) else labels
        shown = set(_LEGEND.findall(labelled)) | set(_ANNOTATION.findall(labelled))
        assert shown <= outer, f"{where}: shows {sorted(shown - outer)}, which the query does not keep"
        checked += 1
    assert checked >= 10


@pytest.mark.usefixtures("requires_promtool")
def test_every_route_query_returns_data_on_the_gateway_s_series(tmp_path: Path) -> None:
    """Prometheus' own evaluator (promtool) runs every query of the routes row and every route alert's expression
    (without its threshold) on ten minutes of the series the gateway exports, as scraped from one pod: each
    returns data. A query that parses but selects or aggregates nothing would leave a panel empty."""
    series = []
    for name, labels, value in gateway_series():
        text = ",".join(f'{k}="{v}"' for k, v in {**labels, "namespace": "versus", "pod": "gateway-0"}.items())
        # Counters grow (rate() needs two points); gauges hold their value.
        values = "0+1x10" if name.endswith("_total") else f"{value:g}x10"
        series.append({"series": f"{name}{{{text}}}", "values": values})
    exprs = [expr for where, expr, _ in route_queries() if "/" in where]
    # An alert's expression up to its first comparison: what its threshold is compared with.
    exprs += [re.split(r"\s(?:==|>)\s", r["expr"])[0] for r in alert_rules() if r["alert"] in ROUTE_ALERTS]
    tests = [{"expr": f"count({for_prometheus(e)}) > bool 0", "eval_time": "10m",
              "exp_samples": [{"labels": "{}", "value": 1}]} for e in exprs]
    (tmp_path / "rules.yaml").write_text("groups: []\n")
    (tmp_path / "queries.test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]}))
    result = subprocess.run(["promtool", "test", "rules", "queries.test.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(tests) >= 12


# -- overlays/shadow-kserve (kubectl's kustomize) ----------------------------------------------------------------------
OVERLAY = "shadow-kserve"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")


def _merged_env(runtime: dict, isvc: dict) -> dict[str, str]:
    """The predictor container's env as KServe builds it: the runtime's, overridden by name by the
    InferenceService's (a strategic merge, utils.MergeRuntimeContainers)."""
    (container,) = runtime["spec"]["containers"]
    return {e["name"]: e["value"] for e in [*container["env"], *isvc["spec"]["predictor"]["model"]["env"]]}


def _predictor_pod_labels(isvc: str) -> dict[str, str]:
    """The labels KServe (RawDeployment) puts on an InferenceService's predictor pods."""
    return {"serving.kserve.io/inferenceservice": isvc, "component": "predictor", "app": f"isvc.{isvc}-predictor"}


def _shadow() -> tuple[list[dict], dict[str, dict], dict[str, str]]:
    docs = render(OVERLAY)
    return docs, by_kind(docs, "InferenceService"), by_kind(docs, "ConfigMap")["gateway-config"]["data"]


@needs_kubectl
def test_two_inference_services_pass_kserve_s_crd_schemas() -> None:
    """The primary is deploy/kserve's ViT itself; the candidate runs the same runtime and weights in fp16."""
    from services.vit.config import VitConfig

    docs, services, _ = _shadow()
    runtimes = by_kind(docs, "ServingRuntime")
    assert sorted(services) == ["vit-base-patch16-224", "vit-base-patch16-224-fp16"]
    assert list(runtimes) == ["versus-vit"]
    (original,) = [d for d in render_dir(ROOT / "deploy" / "kserve") if d["metadata"]["name"] in services]
    assert services["vit-base-patch16-224"]["spec"] == original["spec"], "the primary is deploy/kserve's, unchanged"
    for doc in [*services.values(), *runtimes.values()]:
        assert doc["metadata"]["namespace"] == "versus"
        assert not kserve_errors(doc), (doc["metadata"]["name"], kserve_errors(doc))
    envs = {name: _merged_env(runtimes[isvc["spec"]["predictor"]["model"]["runtime"]], isvc)
            for name, isvc in services.items()}
    settings = {VitConfig.env_name(f) for f in VitConfig.__dataclass_fields__}
    for name, env in envs.items():
        assert set(env) - settings <= PROCESS_ENV, f"{name}: {sorted(set(env) - settings - PROCESS_ENV)}"
        assert services[name]["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    primary, candidate = envs["vit-base-patch16-224"], envs["vit-base-patch16-224-fp16"]
    assert (primary["VIT_PRECISION"], candidate["VIT_PRECISION"]) == ("bf16", "fp16")
    assert {k: v for k, v in primary.items() if k != "VIT_PRECISION"} == \
        {k: v for k, v in candidate.items() if k != "VIT_PRECISION"}, "only the precision differs"


@needs_kubectl
def test_the_gateway_dials_each_predictor_s_pods() -> None:
    """Each registered deployment is a headless Service of one InferenceService's predictor pods (the labels KServe
    gives them) at the runtime's gRPC container port (a headless Service's clients dial the pods: no port mapping),
    asking for the OIP model the runtime serves; the gateway's channel balances over the pods it resolves to."""
    from services.gateway.deployments import parse_deployment
    from services.gateway.oip_client import SERVICE_CONFIG
    from services.vit.oip import VitImageModel

    docs, services, data = _shadow()
    runtimes = by_kind(docs, "ServingRuntime")
    headless = by_kind(docs, "Service")
    dialled = {}
    for text in data["GATEWAY_DEPLOYMENTS"].split(";"):
        spec = parse_deployment(text)
        host, port = re.fullmatch(r"dns:///([a-z0-9-]+)\.versus\.svc\.cluster\.local:(\d+)", spec.target).groups()
        svc = headless[host]["spec"]
        assert svc["clusterIP"] == "None" and not svc.get("publishNotReadyAddresses"), f"{host}: not headless"
        selected = [i for n, i in services.items() if svc["selector"].items() <= _predictor_pod_labels(n).items()]
        assert len(selected) == 1, f"{host} selects the pods of {len(selected)} InferenceServices"
        isvc = selected[0]
        runtime = runtimes[isvc["spec"]["predictor"]["model"]["runtime"]]
        (container,) = runtime["spec"]["containers"]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        (published,) = [p for p in svc["ports"] if p["port"] == int(port)]
        assert int(port) == grpc_port and published["targetPort"] in ("grpc", grpc_port), f"{spec.id}: {port}"
        assert spec.model == VitImageModel.name and spec.output == "PROBABILITIES"
        dialled[spec.id] = isvc["metadata"]["name"]
    assert json.loads(SERVICE_CONFIG)["loadBalancingConfig"] == [{"round_robin": {}}]
    assert sorted(dialled.values()) == sorted(services), "each InferenceService registered once"
    assert data["GATEWAY_RANKER"], "routes need the ranker"


def _route_file(docs: list[dict], data: dict[str, str]) -> tuple[str, str]:
    """(GATEWAY_ROUTES, the text the gateway pod reads there): through the pod's volume mount of the ConfigMap."""
    path = data["GATEWAY_ROUTES"]
    pod = pod_spec(by_kind(docs, "Deployment")["gateway"])
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"]
    config_map = by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]
    return path, config_map["data"][path.removeprefix(mount["mountPath"] + "/")]


@needs_kubectl
def test_the_route_file_parses_with_the_gateway_s_parser(tmp_path: Path) -> None:
    """The mounted GATEWAY_ROUTES file, with the ConfigMap's settings, through the gateway's own config and route
    parser: one shadow route from the primary InferenceService to the candidate, with the issue's bounds."""
    from services.gateway.config import GatewayConfig
    from services.gateway.routes.spec import parse_routes

    docs, services, data = _shadow()
    path, text = _route_file(docs, data)
    local = tmp_path / "routes.yaml"
    local.write_text(text)
    settings = {k: v for k, v in data.items() if k.startswith("GATEWAY_")}
    routes = parse_routes(GatewayConfig.from_env({**settings, "GATEWAY_ROUTES": str(local)}))
    (route,) = routes.values()
    assert (route.name, route.mode, route.share) == ("vit-fp16-shadow", "shadow", 0.25)
    assert route.primary.target.startswith("dns:///vit-base-patch16-224-predictor-headless.")
    assert route.candidate.target.startswith("dns:///vit-base-patch16-224-fp16-predictor-headless.")
    assert [b.text() for b in route.bounds] == ["agreement >= 0.99", "p99_ratio <= 1.1", "error_rate_diff <= 0.001"]
    assert not route.keep_inputs, "inputs are not kept unless the route says so"
    # docs/DEPLOY.md section 15 shows this route: what it shows is what the file declares.
    (shown,) = yaml.safe_load(_doc_block("shadow-route"))["routes"]
    (declared,) = yaml.safe_load(text)["routes"]
    assert shown == {k: declared[k] for k in shown}, "docs/DEPLOY.md section 15 shows another route"


@needs_kubectl
def test_only_the_gateway_reaches_the_predictors() -> None:
    """Clients go through the route (else their requests are neither mirrored nor paired): the predictors' gRPC
    port admits the gateway pods only, their metrics port the monitoring namespace only."""
    docs, services, _ = _shadow()
    policies = by_kind(docs, "NetworkPolicy")
    runtime = by_kind(docs, "ServingRuntime")["versus-vit"]
    ports = {p["name"]: p["containerPort"] for p in runtime["spec"]["containers"][0]["ports"]}
    for name in services:
        pod = _predictor_pod_labels(name)
        selecting = [p for p in policies.values() if all(pod.get(k) == v for k, v in
                                                          p["spec"]["podSelector"]["matchLabels"].items())]
        assert selecting, f"{name}: no NetworkPolicy selects its predictor pods"
        for source in ALL_SOURCES:
            grpc_ok = any(allowed(p, *source, ports["grpc"]) for p in selecting)
            metrics_ok = any(allowed(p, *source, ports["metrics"]) for p in selecting)
            assert grpc_ok is (source == GATEWAY), f"{name}: {source} → gRPC"
            assert metrics_ok is (source == MONITORING), f"{name}: {source} → metrics"
            assert not any(allowed(p, *source, ports["http1"]) for p in selecting), f"{name}: {source} → REST"
