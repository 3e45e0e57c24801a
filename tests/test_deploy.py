"""deploy/: every overlay renders with kubectl kustomize, validates against the Kubernetes schema, and passes the
policy checks a platform team would apply (resources, probes, non-root, read-only root, GPU requests, isolation,
every metrics port scraped, every env var a real setting, every command line accepted by the real CLI); the
Dockerfiles are pinned, non-root and run ``versus``."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from services.common import registry

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
SERVICES = registry.NAMES
#: gRPC and metrics ports of every service: its config's defaults (DESIGN §1).
PORTS = {s.name: (s.config_class().port, s.config_class().metrics_port) for s in registry.SERVICES}
CLIENT_LABEL = {"versus.dev/client": "true"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")


@cache
def _render_text(path: str) -> str:
    return subprocess.run(["kubectl", "kustomize", path],
                          capture_output=True, text=True, check=True, timeout=120).stdout


def render(overlay: str) -> list[dict]:
    return render_dir(K8S / "overlays" / overlay)


def render_dir(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(_render_text(str(path))) if d]


def render_with(overlay: str, *, components: tuple[str, ...] = (), patches: tuple[dict, ...] = ()) -> list[dict]:
    """The overlay as a deployer's own kustomization builds it: the overlay plus components and patches."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        def rel(path: Path) -> str:  # kustomize refuses absolute paths
            return os.path.relpath(path, tmp)

        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [rel(K8S / "overlays" / overlay)],
            "components": [rel(K8S / "components" / c) for c in components], "patches": list(patches)}))
        return [d for d in yaml.safe_load_all(subprocess.run(["kubectl", "kustomize", tmp], capture_output=True,
                                                             text=True, check=True, timeout=120).stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]


def service_of(dep: dict) -> str:
    """The service a Deployment's pods run: their app.kubernetes.io/name (sd35 for every sd35-VARIANT)."""
    return dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]


def instances(docs: list[dict], service: str) -> list[str]:
    """The Deployments of ``service``: one, named after it, or one per SD3.5 variant (components/sd35-per-variant)."""
    return sorted(n for n, d in by_kind(docs, "Deployment").items() if service_of(d) == service)


def all_containers(dep: dict) -> list[dict]:
    pod = pod_spec(dep)
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_the_three_overlays_exist() -> None:
    assert {"cpu", "gpu", "triton"} <= set(OVERLAYS)


# -- a bare cluster, and one image override ----------------------------------------------------------------------
#: API groups a cluster has without any operator: core (""), apps, policy, autoscaling, networking.
BARE_GROUPS = {"", "apps", "policy", "autoscaling", "networking.k8s.io"}


def test_base_renders_only_built_in_kinds() -> None:
    """The base applies on a bare cluster: no CRD kinds (ServiceMonitor, PrometheusRule live in
    components/prometheus-operator)."""
    docs = render_dir(K8S / "base")
    groups = {d["apiVersion"].rpartition("/")[0] for d in docs}
    assert groups <= BARE_GROUPS, f"base needs CRDs: {sorted(groups - BARE_GROUPS)}"
    assert {"Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler"} <= {d["kind"] for d in docs}


def test_prometheus_operator_component_carries_the_monitoring_objects() -> None:
    docs = render_with("cpu", components=("prometheus-operator",))
    monitoring = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in monitoring} == {"ServiceMonitor", "PrometheusRule"}
    assert all(d["metadata"]["namespace"] == "versus" for d in monitoring)
    assert "versus-grafana-dashboard" in by_kind(docs, "ConfigMap")


REGISTRY, TAG = "registry.example.com/team/versus", "1.4.2"


def _set_images(kustomization: Path, pairs: list[str]) -> None:
    """What ``kustomize edit set image NAME=IMAGE:TAG ...`` does to ``images:`` (replace the entry of that name,
    else append; keep the list sorted by name)."""
    doc = yaml.safe_load(kustomization.read_text())
    entries = {e["name"]: e for e in doc.get("images", [])}
    for pair in pairs:
        name, _, ref = pair.partition("=")
        new_name, _, new_tag = ref.rpartition(":")
        entries[name] = {"name": name, "newName": new_name, "newTag": new_tag}
    doc["images"] = [entries[n] for n in sorted(entries)]
    kustomization.write_text(yaml.safe_dump(doc))


def _override_command() -> list[str]:
    """The override docs/DEPLOY.md gives, with REGISTRY and TAG filled in."""
    line = next(ln for ln in _doc_block("set-image").splitlines() if "kustomize edit set image" in ln)
    words = shlex.split(line.replace("REGISTRY/versus", REGISTRY).replace("TAG", TAG))
    return words[words.index("image") + 1:]


@pytest.mark.parametrize("order", ["as documented", "reversed"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_documented_image_override_reaches_every_pod(overlay: str, order: str, tmp_path: Path) -> None:
    """After the documented override every Versus container (init containers and Jobs too) runs the registry's
    image and tag: the CUDA tag exactly in pods that get a GPU, the CPU tag everywhere else."""
    pairs = _override_command()
    assert {p.partition("=")[0] for p in pairs} == {"versus-cpu", "versus-cuda"}
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")  # the whole tree: overlays/shadow-kserve includes kserve/
    tree = tmp_path / "deploy" / "k8s"
    _set_images(tree / "overlays" / overlay / "kustomization.yaml", pairs if order == "as documented" else pairs[::-1])
    docs = render_dir(tree / "overlays" / overlay)
    checked = 0
    for doc in docs:
        if doc["kind"] == "ServingRuntime":  # KServe's predictors (overlays/shadow-kserve): GPU pods
            assert {c["image"] for c in doc["spec"]["containers"]} == {f"{REGISTRY}:{TAG}-cuda"}, overlay
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        gpu = any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in pod["containers"])
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            if c["image"].startswith("nvcr.io/nvidia/tritonserver:"):
                continue
            want = f"{REGISTRY}:{TAG}-cuda" if gpu else f"{REGISTRY}:{TAG}"
            assert c["image"] == want, f"{overlay}/{doc['metadata']['name']}/{c['name']}: {c['image']}, not {want}"
            checked += 1
    assert checked >= 4


# -- schema ---------------------------------------------------------------------------------------------------
def _schema_versions() -> list[str]:
    """The oldest Kubernetes we support and the newest schema the validator ships."""
    from kubernetes_validate.utils import latest_version

    return sorted({"1.33", ".".join(latest_version().split(".")[:2])})


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", _schema_versions())
def test_overlay_validates_against_schema(overlay: str, version: str) -> None:
    import kubernetes_validate

    validated = 0
    for doc in render(overlay):
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # a CRD: checked structurally in test_every_metrics_port_is_scraped
        if doc["apiVersion"].startswith("keda.sh"):
            continue  # KEDA's CRD: validated against its schema in tests/test_autoscaling.py
        if doc["apiVersion"].startswith("serving.kserve.io/"):  # KServe's CRDs (overlays/shadow-kserve)
            assert not kserve_errors(doc), (doc["metadata"]["name"], kserve_errors(doc))
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        validated += 1
    assert validated >= 30


def with_monitoring(overlay: str) -> list[dict]:
    """The overlay with components/prometheus-operator (gpu-keda has it already: KEDA reads Prometheus)."""
    docs = render(overlay)
    return docs if by_kind(docs, "ServiceMonitor") else render_with(overlay, components=("prometheus-operator",))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_all_four_services_are_complete(overlay: str) -> None:
    docs = with_monitoring(overlay)
    for service in SERVICES:
        for kind, object_name in (("ConfigMap", f"{service}-config"), ("ServiceAccount", service),
                                  ("ServiceMonitor", service)):
            assert object_name in by_kind(docs, kind), f"{overlay}: {kind}/{object_name} missing"
        assert instances(docs, service), f"{overlay}: no Deployment of {service}"
        for name in instances(docs, service):
            for kind, object_name in (("Deployment", name), ("Service", name), ("Service", f"{name}-headless"),
                                      ("PodDisruptionBudget", name), ("NetworkPolicy", name)):
                assert object_name in by_kind(docs, kind), f"{overlay}: {kind}/{object_name} missing"
            assert by_kind(docs, "Service")[f"{name}-headless"]["spec"]["clusterIP"] == "None"
            # The ranker scales only on PostgreSQL: on SQLite it is one pod on a ReadWriteOnce claim.
            scaled = name != "ranker" or overlay == "postgresql"
            assert (name in autoscalers(docs)) is scaled, f"{overlay}: {name} autoscaler"
    gateway_ports = {p["name"]: p["port"] for p in by_kind(docs, "Service")["gateway"]["spec"]["ports"]}
    # No report pages (8080): they bind the pod's loopback and are reached with kubectl port-forward only.
    assert gateway_ports == {"grpc": 50050, "metrics": 9100}
    gateway = pod_spec(by_kind(docs, "Deployment")["gateway"])["containers"][0]
    assert 8080 not in [p["containerPort"] for p in gateway["ports"]]
    assert by_kind(docs, "ConfigMap")["gateway-config"]["data"]["GATEWAY_HTTP_HOST"] == "127.0.0.1"


def autoscalers(docs: list[dict]) -> dict[str, list[str]]:
    """Deployment name → the autoscalers that drive it: HPAs and KEDA ScaledObjects (which make an HPA of their own)."""
    out: dict[str, list[str]] = {}
    for doc in docs:
        if doc["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            out.setdefault(doc["spec"]["scaleTargetRef"]["name"], []).append(f"{doc['kind']}/{doc['metadata']['name']}")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_autoscaler_per_deployment(overlay: str) -> None:
    """Two autoscalers on one Deployment fight over its replicas (the KEDA component deletes the CPU HPAs)."""
    docs = render(overlay)
    scaled = autoscalers(docs)
    assert all(len(by) == 1 for by in scaled.values()), f"{overlay}: {scaled}"
    assert set(scaled) <= set(by_kind(docs, "Deployment"))


# -- pod policy -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_bounded_non_root_read_only_and_pinned(overlay: str) -> None:
    docs = render(overlay)
    for name, dep in by_kind(docs, "Deployment").items():
        account = by_kind(docs, "ServiceAccount")[pod_spec(dep)["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is False, f"{name}: no API token in model pods"
        pod = pod_spec(dep)
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"]), f"{name}: /dev/shm"
        for c in all_containers(dep):
            where = f"{overlay}/{name}/{c['name']}"
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"], where
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), f"{where}: writable /tmp"
            image, _, tag = c["image"].rpartition(":")
            assert image in ("versus", "nvcr.io/nvidia/tritonserver"), f"{where}: unmapped image {c['image']}"
            assert tag and tag != "latest" and "/" not in tag, f"{where}: image not pinned"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_drain(overlay: str) -> None:
    """Versus containers: native gRPC probes on grpc.health.v1, readiness per service; a grace period that
    covers drain_delay + grace from their ConfigMap. Triton: its own HTTP health endpoints."""
    docs = render(overlay)
    configs = by_kind(docs, "ConfigMap")
    for name, dep in by_kind(docs, "Deployment").items():
        container = pod_spec(dep)["containers"][0]
        probes = [container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        if name == "triton":
            assert [p["httpGet"]["path"] for p in probes] == ["/v2/health/ready"] * 2 + ["/v2/health/live"]
            continue
        service = service_of(dep)
        assert all("grpc" in p and p["grpc"]["port"] == PORTS[service][0] for p in probes), name
        assert probes[1]["grpc"]["service"].startswith("versus.") and probes[1]["grpc"]["service"].endswith("Service")
        data = configs[f"{service}-config"]["data"]
        prefix = service.upper()
        needed = float(data[f"{prefix}_DRAIN_DELAY_S"]) + float(data[f"{prefix}_GRACE_S"])
        assert pod_spec(dep)["terminationGracePeriodSeconds"] > needed, f"{overlay}/{name}: SIGKILL before drained"


# -- load balancing and isolation -------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_dials_headless_services_with_round_robin(overlay: str) -> None:
    from services.gateway.downstream import service_config

    docs = render(overlay)
    services = by_kind(docs, "Service")
    data = by_kind(docs, "ConfigMap")["gateway-config"]["data"]
    # (service, target, the pods it must reach): a variant's own deployment (components/sd35-per-variant) is
    # its pods only
    dialled = [(name, data[f"GATEWAY_{name.upper()}"], {"app.kubernetes.io/name": name})
               for name in ("vit", "sd35", "ranker") if data[f"GATEWAY_{name.upper()}"]]
    for part in filter(None, data.get("GATEWAY_SD35_VARIANT_TARGETS", "").split(",")):
        variant, _, target = part.partition("=")
        pods = {"app.kubernetes.io/name": "sd35", "app.kubernetes.io/instance": f"sd35-{variant}"}
        dialled.append(("sd35", target, pods))
    assert {d[0] for d in dialled} == {"vit", "sd35", "ranker"}, f"{overlay}: {dialled}"
    for name, target, pods in dialled:
        match = re.fullmatch(r"dns:///([a-z0-9-]+)\.versus\.svc\.cluster\.local:(\d+)", target)
        assert match, f"{overlay}: the {name} target {target} is not a dns:/// target"
        svc = services[match.group(1)]
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"] == pods
        assert int(match.group(2)) in [p["port"] for p in svc["spec"]["ports"]]
    assert '"round_robin"' in service_config()


def _peer_matches(peer: dict, pod: dict[str, str], namespace: str, ns_labels: dict[str, str]) -> bool:
    """One NetworkPolicy ``from`` peer against a source pod (same namespace as the policy is 'versus')."""
    pod_ok = all(pod.get(k) == v for k, v in peer.get("podSelector", {}).get("matchLabels", {}).items())
    if "namespaceSelector" in peer:
        ns_ok = all(ns_labels.get(k) == v for k, v in peer["namespaceSelector"].get("matchLabels", {}).items())
    else:
        ns_ok = namespace == "versus"
    return pod_ok and ns_ok


def allowed(policy: dict, pod: dict[str, str], namespace: str, port: int) -> bool:
    """Would ``policy`` admit a TCP connection from ``pod`` in ``namespace`` to ``port``?"""
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy["spec"]["ingress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        peers = rule.get("from")
        if ports and port not in ports:
            continue
        if peers is None or any(_peer_matches(p, pod, namespace, ns_labels) for p in peers):
            return True
    return False


def admitted(docs: list[dict], target: str, pod: dict[str, str], namespace: str, port: int) -> bool:
    """NetworkPolicies add up: a connection to ``target``'s pods is admitted when any policy selecting them
    admits it. Every Versus pod must be selected by one (else nothing isolates it)."""
    labels = by_kind(docs, "Deployment")[target]["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in by_kind(docs, "NetworkPolicy").values()
                if _selects(p["spec"]["podSelector"]["matchLabels"], labels)]
    assert policies and all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies), f"{target}: not isolated"
    assert all(set(p["spec"]["podSelector"]) == {"matchLabels"} for p in policies)
    return any(allowed(p, pod, namespace, port) for p in policies)


GATEWAY = ({"app.kubernetes.io/name": "gateway"}, "versus")
CLIENT_HERE = (CLIENT_LABEL, "versus")
CLIENT_ELSEWHERE = (CLIENT_LABEL, "search")
STRANGER_HERE = ({"app.kubernetes.io/name": "toolbox"}, "versus")
STRANGER_ELSEWHERE = ({"app": "web"}, "default")
MONITORING = ({"app.kubernetes.io/name": "prometheus"}, "monitoring")
INGRESS = ({"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx")
ALL_SOURCES = (GATEWAY, CLIENT_HERE, CLIENT_ELSEWHERE, STRANGER_HERE, STRANGER_ELSEWHERE, MONITORING, INGRESS)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", ["vit", "sd35", "ranker"])
def test_model_pods_admit_only_the_gateway_and_monitoring(overlay: str, service: str) -> None:
    """docs/DEPLOY.md section 9: gRPC from the gateway pods only; metrics from the monitoring namespace only."""
    docs = render(overlay)
    grpc_port, metrics_port = PORTS[service]
    for name in instances(docs, service):
        for source in ALL_SOURCES:
            assert admitted(docs, name, *source, grpc_port) is (source == GATEWAY), f"{name}: {source} → gRPC"
            assert admitted(docs, name, *source, metrics_port) is (source == MONITORING), f"{name}: {source} → 9xxx"
            assert not admitted(docs, name, *source, 8080), f"{name}: {source} → a port it does not serve"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_admits_only_labelled_clients_and_the_ingress_namespace(overlay: str) -> None:
    docs = render(overlay)
    for source in ALL_SOURCES:
        assert admitted(docs, "gateway", *source, 50050) is (source in (CLIENT_HERE, CLIENT_ELSEWHERE, INGRESS)), \
            f"gateway: {source} → gRPC"
        assert admitted(docs, "gateway", *source, 9100) is (source == MONITORING), f"gateway: {source} → metrics"
        assert not admitted(docs, "gateway", *source, 8080), f"gateway: {source} → the loopback-only pages"


def test_the_ingress_namespace_is_a_parameter() -> None:
    """The patch docs/DEPLOY.md section 9 gives: another controller's namespace replaces ingress-nginx."""
    patch = yaml.safe_load(_doc_block("patch-ingress-namespace"))
    docs = render_with("cpu", patches=(patch,))
    traefik = ({"app.kubernetes.io/name": "traefik"}, "traefik")
    assert admitted(docs, "gateway", *traefik, 50050) and not admitted(docs, "gateway", *traefik, 9100)
    assert not admitted(docs, "gateway", *INGRESS, 50050)
    assert not admitted(docs, "vit", *traefik, 50051)


def _doc_block(name: str) -> str:
    """The fenced block of docs/DEPLOY.md that follows the marker ``<!-- name -->``: tests run what the docs say."""
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    match = re.search(rf"<!-- {name} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"docs/DEPLOY.md has no block marked {name}"
    return match.group(1)


def test_only_vit_reaches_triton() -> None:
    docs = render("triton")
    assert admitted(docs, "triton", {"app.kubernetes.io/name": "vit"}, "versus", 8001)
    assert not admitted(docs, "triton", *GATEWAY, 8001) and not admitted(docs, "triton", *CLIENT_ELSEWHERE, 8001)
    assert admitted(docs, "triton", *MONITORING, 8002) and not admitted(docs, "triton", *STRANGER_HERE, 8002)


# -- metrics ----------------------------------------------------------------------------------------------------
def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_metrics_port_is_scraped(overlay: str) -> None:
    """Each container port named ``metrics`` is annotated for annotation-based scrapers AND reached by a
    ServiceMonitor through a Service that exposes it (with components/prometheus-operator)."""
    docs = with_monitoring(overlay)
    services, monitors = by_kind(docs, "Service"), by_kind(docs, "ServiceMonitor")
    scraped = 0
    for name, dep in by_kind(docs, "Deployment").items():
        template = dep["spec"]["template"]
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert "metrics" in ports, f"{name}: no metrics port"
        notes = template["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) == ports["metrics"]
        labels = template["metadata"]["labels"]
        exposing = [s for s in services.values() if _selects(s["spec"].get("selector", {}), labels)
                    and any(p.get("targetPort") == "metrics" and p["name"] == "metrics" for p in s["spec"]["ports"])]
        assert exposing, f"{overlay}/{name}: no Service exposes the metrics port"
        assert any(_selects(m["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
                   and any(e["port"] == "metrics" for e in m["spec"]["endpoints"])
                   for m in monitors.values() for s in exposing), f"{overlay}/{name}: no ServiceMonitor"
        scraped += 1
    assert scraped == len(by_kind(docs, "Deployment")) >= 4


# -- GPUs -------------------------------------------------------------------------------------------------------
def _gpus(dep: dict) -> str | None:
    limits = pod_spec(dep)["containers"][0]["resources"]["limits"]
    return limits.get("nvidia.com/gpu")


@pytest.mark.parametrize(("overlay", "on_gpu", "off_gpu"), [
    ("cpu", (), ("vit", "sd35", "ranker", "gateway")),
    ("gpu", ("vit", "sd35"), ("ranker", "gateway")),
    ("triton", ("triton", "sd35"), ("vit", "ranker", "gateway")),
])
def test_gpu_requests(overlay: str, on_gpu: tuple[str, ...], off_gpu: tuple[str, ...]) -> None:
    deployments = by_kind(render(overlay), "Deployment")
    for name in on_gpu:
        dep = deployments[name]
        resources = pod_spec(dep)["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1", name
        assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(dep)["tolerations"]), name
        assert pod_spec(dep)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        if name != "triton":
            assert pod_spec(dep)["containers"][0]["image"].endswith("-cuda"), f"{name}: CUDA image"
    for name in off_gpu:
        assert _gpus(deployments[name]) is None, f"{overlay}/{name} asks for a GPU it does not use"
        assert not pod_spec(deployments[name])["containers"][0]["image"].endswith("-cuda"), name


#: Parameters of what every SD3.5 pipeline loads besides its transformer, computed from the architectures' configs
#: (docs/DEPLOY.md section 6): CLIP-L text encoder, OpenCLIP bigG text encoder, T5-XXL v1.1 encoder, the VAE.
SD35_SHARED_PARAMETERS = 123_060_480 + 694_659_840 + 4_762_310_656 + 83_653_863


def _sd35_weights_bytes(variants: list[str], bytes_per_parameter: int = 2) -> int:
    """bf16 weights of ``variants`` hosted in one process: each loads its own pipeline (services/sd35/engine.py)."""
    import json

    catalog = ROOT / "services" / "ranker" / "catalog"
    return sum(bytes_per_parameter * (json.loads((catalog / f"stable-diffusion-3.5-{v}.json").read_text())["parameters"]
                                      + SD35_SHARED_PARAMETERS) for v in variants)


@pytest.mark.parametrize("overlay", ["gpu", "triton"])
def test_the_sd35_pod_lands_only_on_a_gpu_its_variants_fit(overlay: str) -> None:
    """The variants of SD35_MODELS, each a whole pipeline in bf16, plus 10% for activations, fit the smallest GPU
    the pod may be scheduled on (GPU feature discovery's nvidia.com/gpu.memory, MiB)."""
    docs = render(overlay)
    pod = pod_spec(by_kind(docs, "Deployment")["sd35"])
    variants = [p.split("=", 1)[0] for p in by_kind(docs, "ConfigMap")["sd35-config"]["data"]["SD35_MODELS"].split(",")]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (memory,) = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.memory"]
    assert memory["operator"] == "Gt"
    assert int(memory["values"][0]) * 2**20 >= 1.1 * _sd35_weights_bytes(variants), f"{overlay}: {variants}"
    assert 70e9 < _sd35_weights_bytes(["large", "large-turbo", "medium"]) < 73e9  # the 71 GB docs/DEPLOY.md states


# -- overlays' specifics ------------------------------------------------------------------------------------------
def test_cpu_overlay_builds_its_own_models() -> None:
    docs = render("cpu")
    deployments, configs = by_kind(docs, "Deployment"), by_kind(docs, "ConfigMap")
    pod = pod_spec(deployments["vit"])
    # vit-tiny: random weights with the 1000 ImageNet labels the gateway's judge classifies generated images into.
    assert pod["initContainers"][0]["args"][:3] == ["models", "build", "vit-tiny"]
    assert configs["vit-config"]["data"]["VIT_MODEL"] == "/models/vit-tiny"
    sd = pod_spec(deployments["sd35"])
    assert sd["initContainers"][0]["args"][:3] == ["models", "build", "sd35-large-turbo-tiny"]
    assert configs["sd35-config"]["data"]["SD35_MODELS"] == "large-turbo=/models/sd35-large-turbo-tiny"
    assert all("persistentVolumeClaim" not in v for v in sd["volumes"] if v["name"] in ("models", "adapters"))
    assert "vit-heads" not in by_kind(docs, "PersistentVolumeClaim")  # one replica: heads in an emptyDir
    served = configs["gateway-config"]["data"]["GATEWAY_SERVED"]
    assert "sd35/large-turbo" in served and "sd35/large=" not in served and "sd35/medium" not in served


@pytest.mark.parametrize("overlay", ["gpu", "triton"])
def test_vit_replicas_share_their_heads(overlay: str) -> None:
    """round_robin sends CreateHead to one pod and Classify(head=...) to another: the heads directory must be
    one ReadWriteMany volume."""
    docs = render(overlay)
    dep = by_kind(docs, "Deployment")["vit"]
    heads_dir = by_kind(docs, "ConfigMap")["vit-config"]["data"]["VIT_HEADS_DIR"]
    mount = next(m for m in pod_spec(dep)["containers"][0]["volumeMounts"] if m["mountPath"] == heads_dir)
    volume = next(v for v in pod_spec(dep)["volumes"] if v["name"] == mount["name"])
    claim = by_kind(docs, "PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and dep["spec"]["replicas"] >= 2


def test_triton_overlay_serves_the_vit_through_triton() -> None:
    docs = render("triton")
    deployments, configs, services = by_kind(docs, "Deployment"), by_kind(docs, "ConfigMap"), by_kind(docs, "Service")
    vit = configs["vit-config"]["data"]
    assert vit["VIT_BACKEND"] == "triton"
    host, port = re.fullmatch(r"dns:///([a-z0-9-]+)\.versus\.svc\.cluster\.local:(\d+)", vit["VIT_TRITON_URL"]).groups()
    assert services[host]["spec"]["selector"] == {"app.kubernetes.io/name": "triton"} and int(port) == 8001
    triton = pod_spec(deployments["triton"])
    export = triton["initContainers"][0]
    args = export["args"]
    assert args[:2] == ["triton", "export"] and args[args.index("--name") + 1] == vit["VIT_TRITON_MODEL"]
    assert args[args.index("--platform") + 1] == "onnxruntime" and args[args.index("--device") + 1] == "cuda"
    # The export reads the checkpoint the vit pods read (labels, preprocessing) from the same claim ...
    assert args[args.index("--model") + 1] == vit["VIT_MODEL"]
    claim = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in triton["volumes"]}
    vit_claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                  for v in pod_spec(deployments["vit"])["volumes"]}
    assert claim["models"] == vit_claims["models"] == "weights"
    # ... and writes the repository that tritonserver serves.
    out = args[args.index("--out") + 1]
    server = triton["containers"][0]
    assert f"--model-repository={out}" in server["args"]
    written = next(m["name"] for m in export["volumeMounts"] if m["mountPath"] == out)
    assert any(m["name"] == written and m["mountPath"] == out for m in server["volumeMounts"])
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert f"--grpc-port={ports['grpc']}" in server["args"] and f"--metrics-port={ports['metrics']}" in server["args"]


# -- commands and settings the containers use ------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_versus_command_line_parses(overlay: str) -> None:
    """Each versus container's args are accepted by the real ``versus`` parser (a renamed flag fails here)."""
    from versus_cli.cli import build_parser

    parser = build_parser()
    parsed = 0
    docs = render(overlay)
    for dep in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "Job").values()]:
        for c in all_containers(dep):
            if c["image"].startswith("versus:"):
                parser.parse_args(c["args"])
                parsed += 1
    assert parsed >= 4


#: Process environment the images read besides the service settings (documented in docs/DEPLOY.md).
PROCESS_ENV = {"HF_HUB_OFFLINE", "HF_HOME", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "PYTHONUNBUFFERED",
               "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "MPLCONFIGDIR", "HOME",
               "PGPASSWORD", "HF_HUB_CACHE", "HF_TOKEN_PATH"}
#: The standard OpenTelemetry variables tracing reads (services/common/tracing.py; versus-tracing ConfigMap).
TRACING_ENV = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
               "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"}


def _container_env(docs: list[dict], container: dict) -> set[str]:
    config_maps = by_kind(docs, "ConfigMap")
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref:
            names |= set(config_maps[ref].get("data", {}))
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_env_var_is_a_setting_of_its_service(overlay: str) -> None:
    """A variable a container sets must be a setting of THAT service (e.g. VIT_TOKEN in the sd35 pod would
    leave SD3.5 without auth) or a documented process variable; and every setting's value parses."""
    docs = render(overlay)
    checked = set()
    for name, dep in by_kind(docs, "Deployment").items():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            args = container.get("args", [])
            if args[:1] != ["serve"] or args[1] not in SERVICES:
                continue
            config = registry.spec(args[1]).config_class()
            settings = {config.env_name(f) for f in config.__dataclass_fields__}
            env = _container_env(docs, container)
            unknown = env - settings - PROCESS_ENV - TRACING_ENV
            assert TRACING_ENV - {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} <= env, f"{overlay}/{name}: tracing variables"
            assert not unknown, f"{overlay}/{name}: {sorted(unknown)} are not settings of the {args[1]} service"
            data = {}
            for source in container.get("envFrom", []):
                data |= by_kind(docs, "ConfigMap")[source["configMapRef"]["name"]]["data"]
            if args[1] != "vit":  # VitConfig checks its model directory; the others validate standalone
                config.from_env({k: v for k, v in data.items() if k in settings})
            checked.add(args[1])
    assert checked == set(SERVICES)


def test_the_walk_in_docs_deploys_what_it_says(tmp_path: Path) -> None:
    """docs/DEPLOY.md's bare-cluster walk, steps 1-2, on a copy of the tree: its image override and its component
    give every container the registry's image, and its Secret holds every key the pods mount."""
    walk = _doc_block("walk")
    lines = [ln.strip() for ln in walk.replace("\\\n", " ").splitlines()]
    (overlay,) = [ln.split()[1] for ln in lines if ln.startswith("cd deploy/k8s/overlays/")]
    (set_image,) = [ln for ln in lines if ln.startswith("kustomize edit set image")]
    (add,) = [ln for ln in lines if ln.startswith("kustomize edit add component")]
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    where = tree / overlay.removeprefix("deploy/k8s/")
    pairs = [p.replace("REGISTRY/versus", REGISTRY).replace("TAG", TAG) for p in shlex.split(set_image)[4:]]
    _set_images(where / "kustomization.yaml", pairs)
    doc = yaml.safe_load((where / "kustomization.yaml").read_text())
    doc.setdefault("components", []).append(shlex.split(add)[4])  # what `kustomize edit add component` writes
    (where / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    docs = render_dir(where)
    images = {c["image"] for d in by_kind(docs, "Deployment").values() for c in all_containers(d)}
    assert images == {f"{REGISTRY}:{TAG}"}
    (create,) = [ln for ln in lines if "create secret generic versus-tokens" in ln]
    created = set(re.findall(r"--from-literal=(\w+)=", create))
    mounted = {item["key"] for d in by_kind(docs, "Deployment").values() for v in pod_spec(d)["volumes"]
               if v.get("secret", {}).get("secretName") == "versus-tokens" for item in v["secret"]["items"]}
    assert mounted and mounted == created
    assert f"kubectl apply -k {overlay}" in walk and "--token-file" in walk


# -- secrets --------------------------------------------------------------------------------------------------------
SECRET = {"gateway": "gateway-token", "vit": "vit-token", "sd35": "sd35-token", "ranker": "ranker-token"}


def _materialise(pod: dict, container: dict, root: Path) -> dict[str, str]:
    """Lay the container's versus-tokens mounts out under ``root`` as the kubelet would (each item's key → its
    path, with SECRET's values) and return the container's env with mount paths moved under ``root``."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    moved = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        assert secret["secretName"] == "versus-tokens" and mount["readOnly"], mount
        assert not secret.get("optional"), "auth on: a missing Secret must stop the pod, not open it"
        where = root / mount["mountPath"].strip("/")
        for item in secret["items"]:
            (where / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (where / item["path"]).write_text(SECRET[item["key"]] + "\n")
        moved[mount["mountPath"]] = str(where)
    env = {}
    for e in container.get("env", []):
        assert "secretKeyRef" not in e.get("valueFrom", {}) or e["name"] == "PGPASSWORD", f"{e['name']}: not a file"
        value = e.get("value", "")
        for mount_path, local in moved.items():
            value = value.replace(mount_path, local) if value.startswith(mount_path) else value
        env[e["name"]] = value
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_auth_component_gives_each_process_its_token_as_a_file(overlay: str, tmp_path: Path) -> None:
    """With components/auth every server requires its own key of versus-tokens, read from a mounted file; the
    gateway requires `gateway` and sends each service exactly the token that service requires."""
    from services.gateway.config import GatewayConfig
    from services.ranker.config import RankerConfig
    from services.sd35.config import Sd35Config

    docs = render_with(overlay, components=("auth",))
    deployments = by_kind(docs, "Deployment")
    for name, dep in by_kind(render(overlay), "Deployment").items():
        assert "token" not in str(pod_spec(dep)["volumes"]), f"{overlay}/{name}: tokens are off without the component"
    required: dict[str, str] = {}
    for instance in (i for name in ("vit", "sd35", "ranker") for i in instances(docs, name)):
        name = service_of(deployments[instance])
        pod = pod_spec(deployments[instance])
        env = _materialise(pod, pod["containers"][0], tmp_path / instance)
        path = env[f"{name.upper()}_TOKEN_FILE"]
        if name == "vit":  # VitConfig checks its model directory: read the file as ServerConfig does
            token = Path(path).read_text().strip()
        else:
            settings = {"SD35_MODELS": "large=/models/large"} if name == "sd35" else {}
            token = {"sd35": Sd35Config, "ranker": RankerConfig}[name].from_env(
                {**settings, f"{name.upper()}_TOKEN_FILE": path}).resolved_token()
        assert required.setdefault(name, token) == token, f"{overlay}/{instance}: another {name} token"
    assert required == {n: SECRET[n] for n in ("vit", "sd35", "ranker")}
    pod = pod_spec(deployments["gateway"])
    env = _materialise(pod, pod["containers"][0], tmp_path / "gateway")
    data = by_kind(render_with(overlay, components=("auth",)), "ConfigMap")["gateway-config"]["data"]
    gateway = GatewayConfig.from_env({**data, **{k: v for k, v in env.items() if k.startswith("GATEWAY_")}})
    assert gateway.resolved_token() == SECRET["gateway"]
    assert {n: gateway.resolved_downstream_token(n) for n in required} == required


def test_clients_read_a_token_file_or_versus_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from versus_cli.cli import CliError, _client_settings, build_parser

    parser = build_parser()
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("VERSUS_TOKEN", "from-env")
    def bearer(*flags: str) -> tuple:
        return _client_settings(parser.parse_args(["classify", *flags, "x.png"])).metadata()

    assert bearer("--token-file", str(tmp_path / "token")) == (("authorization", "Bearer from-file"),)
    assert bearer() == (("authorization", "Bearer from-env"),)
    assert bearer("--token", "flag") == (("authorization", "Bearer flag"),)
    with pytest.raises(CliError, match="cannot read"):
        bearer("--token-file", str(tmp_path / "missing"))
    with pytest.raises(CliError, match="not both"):
        bearer("--token", "flag", "--token-file", str(tmp_path / "token"))
    monkeypatch.delenv("VERSUS_TOKEN")
    assert bearer() == ()


def test_postgresql_overlay_wires_the_ranker_db_secret() -> None:
    docs = render("postgresql")
    ranker = by_kind(docs, "Deployment")["ranker"]
    container = pod_spec(ranker)["containers"][0]
    (password,) = [e for e in container["env"] if e["name"] == "PGPASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "versus-ranker-db", "key": "password"}
    db = by_kind(docs, "ConfigMap")["ranker-config"]["data"]["RANKER_DB"]
    assert db.startswith("postgresql://") and ":" not in db.split("//")[1].split("@")[0], "no password in the URL"
    assert ranker["spec"]["strategy"]["type"] == "RollingUpdate" and ranker["spec"]["replicas"] >= 2
    assert "ranker-data" not in by_kind(docs, "PersistentVolumeClaim")
    assert all(m["mountPath"] != "/data" for m in container["volumeMounts"])
    assert autoscalers(docs)["ranker"] == ["HorizontalPodAutoscaler/ranker"]
    for overlay in set(OVERLAYS) - {"postgresql"}:  # SQLite: one pod, never two on the file
        assert by_kind(render(overlay), "Deployment")["ranker"]["spec"]["strategy"] == {"type": "Recreate"}


# -- weights -------------------------------------------------------------------------------------------------------
WEIGHTS_OVERLAYS = [o for o in OVERLAYS if o != "cpu"]


def _hub_ids(configs: dict[str, dict]) -> dict[str, set[str]]:
    """Service → the hub ids its pods are configured with (VIT_MODEL, SD35_MODELS)."""
    vit, sd35 = configs["vit-config"]["data"], configs["sd35-config"]["data"]
    return {"vit": {vit["VIT_MODEL"]}, "sd35": {part.split("=", 1)[1] for part in sd35["SD35_MODELS"].split(",")}}


@pytest.mark.parametrize("overlay", WEIGHTS_OVERLAYS)
def test_weights_jobs_pull_what_the_pods_read(overlay: str) -> None:
    """The Jobs pull, into the hub cache the pods read offline (HF_HUB_CACHE on the claim they mount read-only),
    exactly the hub ids the pods are configured with; SD3.5 with the HF token from a Secret file and every part its
    engine loads. The gateway hashes that same store, read-only (GATEWAY_WEIGHTS_ROOT)."""
    from services.sd35.engine import _HUB_PARTS, _T5_PARTS
    from versus_cli.cli import build_parser

    docs = render(overlay)
    configs, jobs, claims = by_kind(docs, "ConfigMap"), by_kind(docs, "Job"), by_kind(docs, "PersistentVolumeClaim")
    wanted = _hub_ids(configs)
    pulled: dict[str, tuple[set[str], str]] = {}  # claim → (ids, cache path inside the claim)
    for job in jobs.values():
        pod = pod_spec(job)
        (container,) = pod["containers"]
        args = build_parser().parse_args(container["args"])
        assert (args.command, args.models_command) == ("models", "pull")
        claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
        mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "models")
        assert args.cache.startswith(mount + "/") and claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]
        ids, cache = pulled.get(claim, (set(), args.cache[len(mount):]))
        assert cache == args.cache[len(mount):], "one hub cache per claim"
        pulled[claim] = (ids | set(args.ids), cache)
        assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HF_HUB_OFFLINE"] == "0"
        # SD3.5 is gated: the token is a mounted Secret file, never an env var or an arg.
        if any(i.startswith("stabilityai/") for i in args.ids):
            token_dir = next(m for m in container["volumeMounts"] if env["HF_TOKEN_PATH"].startswith(m["mountPath"]))
            secret = next(v["secret"] for v in pod["volumes"] if v["name"] == token_dir["name"])
            assert secret["secretName"] == "hf-token" and token_dir["readOnly"]
            assert {f"{p}/*" for p in (*_HUB_PARTS, *_T5_PARTS)} | {"model_index.json"} <= set(args.include)
    assert {c: ids for c, (ids, _) in pulled.items()} == {"weights": wanted["vit"] | wanted["sd35"]}
    for name, service in ((i, f"{s}-config") for s in ("vit", "sd35") for i in instances(docs, s)):
        pod = pod_spec(by_kind(docs, "Deployment")[name])
        models = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models")
        cache = configs[service]["data"]["HF_HUB_CACHE"]
        assert mount["readOnly"] and models["readOnly"] and configs[service]["data"]["HF_HUB_OFFLINE"] == "1"
        assert cache == mount["mountPath"] + pulled[models["claimName"]][1], f"{overlay}/{name} reads another cache"
    gateway = pod_spec(by_kind(docs, "Deployment")["gateway"])
    (mount,) = [m for m in gateway["containers"][0]["volumeMounts"] if m["name"] == "weights"]
    claim = next(v for v in gateway["volumes"] if v["name"] == "weights")["persistentVolumeClaim"]
    root = next(e["value"] for e in gateway["containers"][0]["env"] if e["name"] == "GATEWAY_WEIGHTS_ROOT")
    assert mount["readOnly"] and claim["readOnly"] and root == mount["mountPath"] + pulled[claim["claimName"]][1]


@pytest.mark.slow
def test_models_pull_fills_a_hub_cache_the_services_read_offline(tmp_path: Path) -> None:
    """`versus models pull` against a fake hub (the real hub client): the snapshot lands in the cache's own
    layout, only the included files; a second pull offline finds it and fetches nothing."""
    import os
    import sys

    from hub_fixtures import FakeHub

    repo = tmp_path / "repo"
    shutil.copytree(Path(os.environ.get("VERSUS_MODELS_DIR", ROOT / ".models")) / "vit-tiny", repo)
    (repo / "notes.md").write_text("not included")
    cache = tmp_path / "hub"
    pull = [sys.executable, "-m", "versus_cli", "models", "pull", "versus-test/vit-tiny", "--cache", str(cache),
            "--include", "*.json", "--include", "*.safetensors"]
    with FakeHub({"versus-test/vit-tiny": repo}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
        done = subprocess.run(pull, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"at {hub.commit}" in done.stdout
        fetched = len(hub.requests)
        offline = subprocess.run(pull, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
        assert offline.returncode == 0, offline.stderr
        assert len(hub.requests) == fetched
    snapshot = cache / "models--versus-test--vit-tiny" / "snapshots" / hub.commit  # the hub client's layout
    assert (cache / "models--versus-test--vit-tiny" / "refs" / "main").read_text() == hub.commit
    assert (snapshot / "model.safetensors").read_bytes() == (repo / "model.safetensors").read_bytes()
    assert not (snapshot / "notes.md").exists()


# -- KServe ---------------------------------------------------------------------------------------------------------
KSERVE_CRDS = ROOT / "tests" / "data" / "kserve"


def _strict(schema: dict) -> dict:
    """A CRD's structural schema, refusing fields it does not name (the API server would prune them silently;
    ``kubectl apply --validate=strict`` refuses them)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@cache
def _kserve_validators() -> dict[tuple[str, str], object]:
    """(apiVersion, kind) → a jsonschema validator of KServe's full CRD schema (tests/data/kserve/SOURCE.md)."""
    import jsonschema

    out = {}
    for path in sorted(KSERVE_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            out[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = \
                jsonschema.Draft7Validator(schema)
    return out


def kserve_errors(doc: dict) -> list[str]:
    validator = _kserve_validators()[(doc["apiVersion"], doc["kind"])]
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_kserve_manifests_validate_against_the_full_crd_schemas() -> None:
    docs = render_dir(ROOT / "deploy" / "kserve")
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("InferenceService", "stable-diffusion-3-5-large-turbo"), ("InferenceService", "vit-base-patch16-224"),
        ("ServingRuntime", "versus-sd35"), ("ServingRuntime", "versus-vit")]
    for doc in docs:
        assert not kserve_errors(doc), (doc["metadata"]["name"], kserve_errors(doc))


@pytest.mark.parametrize(("path", "value", "why"), [
    (("spec", "predictor", "model", "resources", "limit"), {"nvidia.com/gpu": "1"}, "a misspelt field"),
    (("spec", "predictor", "minReplicas"), "one", "a string for an integer"),
    (("spec", "predictor", "model", "env"), {"name": "X"}, "an object for a list"),
])
def test_the_kserve_schema_check_refuses_mistakes(path: tuple[str, ...], value: object, why: str) -> None:
    import copy

    (isvc,) = [d for d in render_dir(ROOT / "deploy" / "kserve") if d["metadata"]["name"] == "vit-base-patch16-224"]
    broken = copy.deepcopy(isvc)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert kserve_errors(broken), f"{why} passed the schema"


def test_kserve_runtimes_serve_v2_on_gpus_with_the_project_image() -> None:
    """RawDeployment, OIP v2 over REST (the first port: KServe publishes it on 80) and over gRPC (the servers' own
    port, h2c), one GPU each,
    the CUDA image of the Dockerfiles, command lines and settings the real service accepts, the weights the weights
    Jobs pull, on the claims they fill."""
    import tomllib

    from versus_cli.cli import _config_class, build_parser

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    docs = render_dir(ROOT / "deploy" / "kserve")
    runtimes, services = by_kind(docs, "ServingRuntime"), by_kind(docs, "InferenceService")
    overlay = render("gpu")
    claims, jobs = by_kind(overlay, "PersistentVolumeClaim"), by_kind(overlay, "Job")
    pulled = {a for j in jobs.values() for a in pod_spec(j)["containers"][0]["args"] if "/" in a and a[0] != "/"}
    for isvc in services.values():
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]["spec"]
        assert model["modelFormat"]["name"] in [f["name"] for f in runtime["supportedModelFormats"]]
        assert model["protocolVersion"] == "v2" and {"v2", "grpc-v2"} <= set(runtime["protocolVersions"])
        assert model["resources"]["requests"]["nvidia.com/gpu"] == model["resources"]["limits"]["nvidia.com/gpu"] == "1"
        (container,) = runtime["containers"]
        assert container["name"] == "kserve-container" and container["image"] == f"versus:{version}-cuda"
        args = build_parser().parse_args(container["args"])
        service = args.service
        config = _config_class(service)
        env = {e["name"]: e["value"] for e in [*container["env"], *model["env"]]}
        settings = {config.env_name(f) for f in config.__dataclass_fields__}
        assert set(env) - settings <= PROCESS_ENV, f"{service}: {sorted(set(env) - settings - PROCESS_ENV)}"
        rest, *others = container["ports"]
        assert "grpc" not in rest["name"] and rest["containerPort"] == int(env[f"{service.upper()}_HTTP_PORT"])
        (grpc_port,) = [p for p in others if "grpc" in p["name"]]
        assert grpc_port["containerPort"] == int(env[f"{service.upper()}_PORT"]) == PORTS[service][0]
        assert container["readinessProbe"]["grpc"]["port"] == grpc_port["containerPort"]
        volumes = {v["name"]: v for v in isvc["spec"]["predictor"]["volumes"]}
        (mount,) = model["volumeMounts"]
        claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim in claims and mount["readOnly"] and env["HF_HUB_CACHE"].startswith(mount["mountPath"] + "/")
        ids = {env["VIT_MODEL"]} if service == "vit" else {p.split("=", 1)[1] for p in env["SD35_MODELS"].split(",")}
        assert ids <= pulled, f"{service}: {ids - pulled} are not pulled by a weights Job"
        if service == "sd35":
            assert len(ids) == 1, "one SD3.5 variant (one pipeline) per GPU"


# -- images -----------------------------------------------------------------------------------------------------------
def _dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / name).read_text()
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_are_pinned_non_root_and_run_versus(name: str) -> None:
    steps = _dockerfile(name)
    args = dict(arg.split("=", 1) for kind, arg in steps if kind == "ARG" and "=" in arg)
    for kind, arg in steps:
        if kind == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], arg.split()[0])
            assert re.search(r":[0-9][^:]*$", image) and not image.endswith(":latest"), f"{name}: {image} not pinned"
    users = [arg for kind, arg in steps if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: must end as a non-root user"
    assert [arg for kind, arg in steps if kind == "ENTRYPOINT"][-1] == '["versus"]'
    runs = " ".join(arg for kind, arg in steps if kind == "RUN")
    assert "--require-hashes -r" in runs and "locks/image.txt" in runs, f"{name}: installs the hashed lock"
    installs = [shlex.split(cmd) for cmd in re.split(r"&&|;", runs) if "pip install" in cmd and "versus-0" in cmd]
    assert installs and "--no-deps" in installs[0] and "--no-index" in installs[0], f"{name}: our wheels, no index"
    wheels = [arg for arg in installs[0] if arg.endswith(".whl")]
    assert [Path(w).name.split("-")[0] for w in wheels] == ["versus_contracts", "versus"], f"{name}: contracts first"
    copied = " ".join(arg for kind, arg in steps if kind == "COPY")
    for path in ("locks/image.txt", ".wheelhouse/"):
        assert path in copied, f"{name}: {path} not copied"
    assert (ROOT / "locks/image.txt").exists()


def test_overlays_run_the_images_the_dockerfiles_build() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    tags = {c["image"] for o in OVERLAYS for dep in by_kind(render(o), "Deployment").values()
            for c in all_containers(dep) if c["image"].startswith("versus:")}
    assert tags == {f"versus:{version}", f"versus:{version}-cuda"}
    for name, tag in (("Dockerfile", f"versus:{version}"), ("Dockerfile.cuda", f"versus:{version}-cuda")):
        assert f"-t {tag} " in (ROOT / name).read_text(), f"{name}: its header must say how to build {tag}"
