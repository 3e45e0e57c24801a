"""Shared fixtures: the project's own models (built once, cached under .models/) and an
in-process server harness that runs a grpc.aio server on its own event-loop thread."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("VERSUS_MODELS_DIR", ROOT / ".models"))


def require(component: str, present: bool, install: str) -> None:
    """A test that needs a real component fails without it, naming it and the command that installs it.

    Never a skip: a machine without PostgreSQL, Chromium, Prometheus or tritonserver must not pass quietly."""
    if not present:
        pytest.fail(f"{component} is not installed: {install}", pytrace=False)


@pytest.fixture
def requires_chromium() -> None:
    from browser import CHROMIUM

    require("Chromium", os.access(CHROMIUM, os.X_OK), "apt-get install chromium (make setup does, as root), "
            "or set VERSUS_CHROMIUM to another browser")


@pytest.fixture
def requires_promtool() -> None:
    require("promtool", shutil.which("promtool") is not None, "apt-get install prometheus (make setup does, as root)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` tests run only where torch sees a CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)


def built_model(name: str) -> Path:
    """Build ``name`` with the project's builder (which records its provenance) unless a cached copy exists."""
    from versus_cli.models import build_model

    out = MODELS / name
    if not (out / "model.safetensors").exists():
        build_model(name, out)
    elif name.startswith("vit") and not (out / "versus-known-answers.json").exists():
        from services.vit.fingerprint import fingerprint_vit  # a copy built before builds recorded known answers

        fingerprint_vit(out, recorded_by=f"versus models build {name}")
    return out


@pytest.fixture(scope="session")
def vit_tiny_dir() -> Path:
    return built_model("vit-tiny")


@pytest.fixture(scope="session")
def vit_digits_dir() -> Path:
    return built_model("vit-digits")


@pytest.fixture(scope="session")
def vit_base_dir() -> Path:
    return built_model("vit-base-random")


class InProcessServer:
    """Start ``create_server(config)`` on a private event loop thread; use real channels to call it."""

    def __init__(self, create_server: Callable, config: object) -> None:
        self._create = create_server
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None
        self.port = 0

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> InProcessServer:
        self._thread.start()

        async def start():
            server, port = self._create(self.config)
            await server.start()
            return server, port

        try:
            self.server, self.port = self.run(start())
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def metrics(self) -> dict[str, float]:
        """The server's /metrics as users see it: ``{'name{label="v",...}': value}`` (labels sorted)."""
        return scrape_metrics(self.server.metrics_port)

    def stop(self, grace: float = 1.0) -> None:
        if self.server is not None:
            self.run(self.server.stop(grace=grace, drain_delay=0))

    def _shutdown_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._shutdown_loop()


def scrape_metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """Read a Prometheus endpoint into ``{'name{label="v",...}': value}`` with labels sorted by name."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for key, v in metrics.items()
               if (key == name or key.startswith(name + "{")) and all(w in key for w in want))


def encode(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def sample_image(seed: int = 0, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A deterministic image with structure (gradient + noise) so different images differ."""
    rng = np.random.default_rng(seed)
    w, h = size
    grad = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    arr = np.clip(grad * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate, made with openssl."""
    import subprocess

    d = tmp_path_factory.mktemp("tls")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=versus-test-ca")
    for name, ext in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        ssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        ssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return {p.name: p for p in d.iterdir()}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (Debian's binaries) on a free port, for the session."""
    import glob
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        require("PostgreSQL", False, "apt-get install postgresql (make setup does, as root)")
    bindir = Path(bins[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="versus-pg-", dir="/tmp"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "versus"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=on"
    subprocess.run(
        [*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", opts, "-l", str(data / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://versus@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(data, ignore_errors=True)


def built_sd35(name: str) -> Path:
    from versus_cli.models import build_model

    out = MODELS / name
    if not (out / "model_index.json").exists():
        build_model(name, out)
    return out


@pytest.fixture(scope="session")
def sd35_dirs() -> dict[str, Path]:
    """variant → tiny pipeline directory."""
    return {
        "large": built_sd35("sd35-large-tiny"),
        "large-turbo": built_sd35("sd35-large-turbo-tiny"),
        "medium": built_sd35("sd35-medium-tiny"),
    }


@pytest.fixture(scope="session")
def adapter_root(sd35_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter root holding the example LoRA (loras/example.safetensors) for the tiny Large."""
    from versus_cli.models import build_model

    root = tmp_path_factory.mktemp("adapters")
    build_model("sd35-lora-example", root / "loras", base=sd35_dirs["large"])
    (root / "loras" / "pytorch_lora_weights.safetensors").rename(root / "loras" / "example.safetensors")
    return root


@dataclass
class GatewayStack:
    """Real vit (vit-tiny: 1000 ImageNet labels), sd35 (the three tiny variants, a LoRA under the adapter
    root), ranker (SQLite) and gateway (with its report pages), each a real gRPC server in this process."""

    vit: InProcessServer
    sd35: InProcessServer
    ranker: InProcessServer
    gateway: InProcessServer

    @property
    def engine(self):  # the services.gateway.engine.Gateway behind the gateway server
        return self.gateway.server.backend.gateway

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.server.backend.http_port}"

    def gateway_config(self, **kw: object):
        from services.gateway.config import GatewayConfig

        base = {"port": 0, "metrics_port": 0, "http_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1",
                "http_host": "127.0.0.1", "http_open": True,  # tests' pages: loopback, opened explicitly
                "drain_delay_s": 0.0, "log_format": "text", "vit": self.vit.target,
                "sd35": self.sd35.target, "ranker": self.ranker.target, "lora_probe_path": "loras/example.safetensors",
                "imagenet_classes": "tench,goldfish", "images_per_class": 1, "compare_budget_s": 240.0,
                "weights_root": str(MODELS),  # the gateway hashes the built models itself
                "probe_size": 128}  # the catalog's 1024 px takes ~10 s per step on 2 CPU cores
        return GatewayConfig.from_env({}, **(base | kw))


@pytest.fixture(scope="session")
def gateway_stack(vit_tiny_dir: Path, sd35_dirs: dict[str, Path], adapter_root: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    from services.gateway.server import create_server as create_gateway
    from services.ranker.config import RankerConfig
    from services.ranker.server import create_server as create_ranker
    from services.sd35.config import Sd35Config
    from services.sd35.server import create_server as create_sd35
    from services.vit.config import VitConfig
    from services.vit.server import create_server as create_vit

    common = {"port": 0, "metrics_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1", "drain_delay_s": 0.0,
              "log_format": "text"}
    db = tmp_path_factory.mktemp("ranker") / "r.db"
    with contextlib.ExitStack() as stack:
        vit = stack.enter_context(InProcessServer(create_vit, VitConfig.from_env(
            {}, model=str(vit_tiny_dir), torch_threads=1, **common)))
        sd35 = stack.enter_context(InProcessServer(create_sd35, Sd35Config.from_env(
            {}, models=tuple(f"{v}={p}" for v, p in sd35_dirs.items()), adapter_root=str(adapter_root),
            default_size=128, torch_threads=1, **common)))
        ranker = stack.enter_context(InProcessServer(create_ranker, RankerConfig.from_env(
            {}, db=f"sqlite:///{db}", bootstrap_rounds=200, **common)))
        partial = GatewayStack(vit, sd35, ranker, None)  # type: ignore[arg-type]
        partial.gateway = stack.enter_context(InProcessServer(create_gateway, partial.gateway_config()))
        yield partial
