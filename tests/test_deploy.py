"""deploy/k8s: every overlay renders with kubectl kustomize and validates against the Kubernetes schema."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "k8s" / "overlays").iterdir() if p.is_dir())

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")


def render(overlay: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_schema(overlay: str) -> None:
    import kubernetes_validate

    for doc in render(overlay):
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # CRD: no schema in the validator
        kubernetes_validate.validate(doc, "1.33", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_services_have_probes_drain_and_isolation(overlay: str) -> None:
    docs = render(overlay)
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    policies = by_kind(docs, "NetworkPolicy")
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" in container[probe], f"{name}: {probe} must be a native gRPC probe"
        assert pod["terminationGracePeriodSeconds"] >= 30 and pod["securityContext"]["runAsNonRoot"]
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"]), f"{name}: /dev/shm"
        assert services[f"{name}-headless"]["spec"]["clusterIP"] == "None"
        assert name in by_kind(docs, "PodDisruptionBudget")
        if dep["metadata"]["labels"]["app.kubernetes.io/component"] == "model-server":
            assert name in by_kind(docs, "HorizontalPodAutoscaler")
        ingress = policies[name]["spec"]["ingress"]
        assert ingress[0]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "gateway"}
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
    assert by_kind(docs, "ServiceMonitor")


@pytest.mark.parametrize("service", ["vit", "sd35"])
def test_gpu_overlay_requests_gpus(service: str) -> None:
    dep = by_kind(render("gpu"), "Deployment")[service]
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_cpu_overlay_builds_its_own_models() -> None:
    docs = render("cpu")
    deployments, configs = by_kind(docs, "Deployment"), by_kind(docs, "ConfigMap")
    pod = deployments["vit"]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"][:3] == ["models", "build", "vit-digits"]
    assert configs["vit-config"]["data"]["VIT_MODEL"] == "/models/vit-digits"
    sd = deployments["sd35"]["spec"]["template"]["spec"]
    assert sd["initContainers"][0]["args"][:3] == ["models", "build", "sd35-large-turbo-tiny"]
    assert configs["sd35-config"]["data"]["SD35_MODELS"] == "large-turbo=/models/sd35-large-turbo-tiny"
    assert all("persistentVolumeClaim" not in v for v in sd["volumes"] if v["name"] in ("models", "adapters"))


#: Process environment the images read besides the service settings (documented in docs/DEPLOY.md).
PROCESS_ENV = {"HF_HUB_OFFLINE", "HF_HOME", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "PYTHONUNBUFFERED",
               "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF"}


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
    leave SD3.5 without auth) or a documented process variable."""
    from versus_cli.cli import SERVICES, _config_class

    docs = render(overlay)
    checked = 0
    for name, dep in by_kind(docs, "Deployment").items():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            args = container.get("args", [])
            if args[:1] != ["serve"] or args[1] not in SERVICES:
                continue
            config = _config_class(args[1])
            settings = {config.env_name(f) for f in config.__dataclass_fields__}
            unknown = _container_env(docs, container) - settings - PROCESS_ENV
            assert not unknown, f"{overlay}/{name}: {sorted(unknown)} are not settings of the {args[1]} service"
            checked += 1
    assert checked >= 3
