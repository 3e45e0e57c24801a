"""The CPU image, built here (`make image`: a Debian rootfs from mmdebstrap, podman, a host-made wheelhouse) and
started with podman: `versus serve vit` on a project-built model mounted read-only answers Health, Classify and
OIP ModelInfer, runs as uid 10001 with no compilers or test tools, and drains on SIGTERM with exit code 0.
Also, without an image: HF_HUB_OFFLINE (the images' default) gives way to --allow-download.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from conftest import InProcessServer, encode, require, sample_image
from hub_fixtures import FakeHub
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from versus_cli.launch import wait_serving

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/versus:0.1.0"
TINY = "versus-test/vit-tiny"


def test_allow_download_overrides_hf_hub_offline(tmp_path: Path) -> None:
    """The images set HF_HUB_OFFLINE=1; the deployer's --allow-download still fetches (through the real hub client,
    from a hub on loopback), and without it nothing is asked of the hub."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text('{"model_type": "vit"}')
    (repo / "model.safetensors").write_bytes(b"weights")
    code = ("import sys; from services.common.hub import resolve_source; "
            "print(resolve_source(sys.argv[1], allow_download=sys.argv[2] == '1').path)")
    with FakeHub({TINY: repo}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        refused = subprocess.run([sys.executable, "-c", code, TINY, "0"], env=env, capture_output=True, text=True)
        assert refused.returncode != 0 and "--allow-download" in refused.stderr and not hub.requests
        fetched = subprocess.run([sys.executable, "-c", code, TINY, "1"], env=env, capture_output=True, text=True)
        assert fetched.returncode == 0, fetched.stderr
        assert (Path(fetched.stdout.strip()) / "model.safetensors").read_bytes() == b"weights"
        assert any(r.endswith("/model.safetensors") for r in hub.requests)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def image() -> str:
    for tool, install in (("podman", "apt-get install podman runc"), ("runc", "apt-get install runc"),
                          ("mmdebstrap", "apt-get install mmdebstrap")):
        require(tool, shutil.which(tool) is not None, f"{install} (make setup does, as root)")
    build = subprocess.run(["make", "-s", "image", f"IMAGE={IMAGE}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=1800)
    assert build.returncode == 0, f"make image failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return IMAGE


@pytest.mark.slow
@pytest.mark.image
@pytest.mark.timeout(2400)  # a cold `make image`: rootfs ~2 min, wheelhouse ~1 min, podman build ~5 min here
def test_the_image_serves_vit_as_non_root_and_drains_on_sigterm(image: str, vit_tiny_dir: Path,
                                                                 tmp_path: Path) -> None:
    flags = subprocess.run(["make", "-s", "podman-flags"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    # What an operator mounts: files the service's user (10001) may read (the builder writes weights 0600).
    model = tmp_path / "model"
    shutil.copytree(vit_tiny_dir, model)
    model.chmod(0o755)
    for f in model.iterdir():
        f.chmod(0o644)
    port, metrics = _free_port(), _free_port()
    name = f"versus-image-test-{os.getpid()}"
    log = tmp_path / "container.log"
    # --network host: the service binds 127.0.0.1 on free ports of the host (no port publishing needed).
    # Attached (no -d): the podman client lives as long as the container, and exits with its exit code.
    with open(log, "wb") as out:
        proc = subprocess.Popen(["podman", "run", *flags, "--rm", "--name", name, "--network", "host",
                                 "-v", f"{model}:/model:ro", image, "serve", "vit", "--model", "/model",
                                 "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics),
                                 "--metrics-host", "127.0.0.1", "--torch-threads", "1", "--drain-delay-s", "1"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        target = f"127.0.0.1:{port}"
        try:
            wait_serving(target, 180, proc=proc)
        except (TimeoutError, RuntimeError) as exc:
            pytest.fail(f"the image's vit never served ({exc}): {log.read_text()[-3000:]}")
        picture = encode(sample_image())
        with grpc.insecure_channel(target) as channel:
            reply = vit_pb2_grpc.VitServiceStub(channel).Classify(vit_pb2.ClassifyRequest(
                images=[common_pb2.Image(data=picture, mime_type="image/png")], top_k=3), timeout=60)
        labels = reply.results[0].labels
        assert len(labels) == 3 and labels[0].score >= labels[1].score >= labels[2].score
        oip = tc.InferenceServerClient(target)
        inp = tc.InferInput("IMAGE", [1], "BYTES")
        inp.set_data_from_numpy(np.array([picture], dtype=np.object_))
        probabilities = oip.infer("vit", [inp]).as_numpy("PROBABILITIES")[0]
        assert abs(float(probabilities.sum()) - 1.0) < 1e-3
        assert labels[0].index == int(np.argmax(probabilities)), "Classify and ModelInfer agree on the top class"

        # The host's own install, same model, same image: the image's packages compute the same answer.
        from services.vit.config import VitConfig
        from services.vit.server import create_server

        config = VitConfig.from_env({}, model=str(vit_tiny_dir), port=0, metrics_port=0, host="127.0.0.1",
                                    metrics_host="127.0.0.1", torch_threads=1, drain_delay_s=0.0, log_format="text")
        with InProcessServer(create_server, config) as srv, srv.channel() as ch:
            host = vit_pb2_grpc.VitServiceStub(ch).Classify(vit_pb2.ClassifyRequest(
                images=[common_pb2.Image(data=picture, mime_type="image/png")], top_k=3), timeout=60)
        assert [lab.index for lab in host.results[0].labels] == [lab.index for lab in labels]

        probe = ("import importlib.util, json, os, shutil; print(json.dumps({'uid': os.getuid(), "
                 "'tools': [t for t in ('gcc', 'cc', 'c++', 'g++', 'clang', 'make', 'ld', 'as') if shutil.which(t)], "
                 "'modules': [m for m in ('pytest', 'ruff', 'pip', 'setuptools', 'torch', 'versus') "
                 "if importlib.util.find_spec(m)], 'offline': os.environ.get('HF_HUB_OFFLINE')}))")
        inside = json.loads(_podman("exec", name, "python", "-c", probe).stdout)
        assert inside == {"uid": 10001, "tools": [], "modules": ["torch", "versus"], "offline": "1"}, inside
    finally:
        _podman("kill", "--signal", "TERM", name, check=False)
        try:
            code = proc.wait(timeout=120)
        finally:
            _podman("rm", "-f", name, check=False)
    logs = log.read_text()
    assert code == 0, f"exit code {code}: {logs[-2000:]}"
    events = [json.loads(line).get("msg") for line in logs.splitlines() if line.startswith("{")]
    assert events[-3:] == ["signal received; shutting down", "draining", "stopped"], events[-5:]
