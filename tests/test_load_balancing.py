"""Client-side load balancing, proven with real replicas: three ViT processes (vit-tiny, one shared heads
directory) behind ONE multi-address target ``ipv4:127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3``, dialled with the
gateway's own channel settings (round_robin, retries for idempotent methods; services/gateway/downstream.py).

- calls spread over all three (each replica's own /metrics counts them);
- a replica SIGKILLed mid-load is routed around: every idempotent call succeeds (retry policy), and a replica
  started again on its address rejoins the rotation;
- ``max_connection_age`` lets a client whose connection is pinned by an L4 proxy (what a Kubernetes ClusterIP
  does) reach a replica that appeared after it connected; without it the new replica gets nothing;
- the same through a real gateway process whose GATEWAY_VIT is the multi-address target.

Traffic goes to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import InProcessServer, encode, metric_sum, sample_image, scrape_metrics
from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.gateway.downstream import channel_options
from versus_cli.launch import ServiceProcess

pytestmark = pytest.mark.slow  # starts three ViT processes and a gateway process

CLASSIFY = vit_pb2.ClassifyRequest(images=[common_pb2.Image(data=encode(sample_image(3)))], top_k=1)


def handled(metrics_port: int, method: str = "Classify", code: str = "OK") -> float:
    return metric_sum(scrape_metrics(metrics_port), "grpc_server_handled_total", grpc_method=method, grpc_code=code)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"not {what} after {timeout_s:.0f}s")


class Replicas:
    """Three `versus serve vit` processes sharing a heads directory (as the vit-heads volume does in Kubernetes)."""

    def __init__(self, model: Path, heads: Path, logs: Path) -> None:
        self.model, self.heads, self.logs = model, heads, logs
        self.procs: list[ServiceProcess] = []

    def start(self, index: int, port: int = 0) -> ServiceProcess:
        args = ["--model", str(self.model), "--torch-threads", "1", "--heads-dir", str(self.heads),
                "--drain-delay-s", "0", "--log-format", "text"]
        if port:
            args += ["--port", str(port)]  # after launch's own --port 0: argparse keeps the last
        proc = ServiceProcess("vit", args, log_path=self.logs / f"vit-{index}.log").start(timeout_s=180)
        if index < len(self.procs):
            self.procs[index].__exit__(None, None, None)  # the dead one's temporary files
            self.procs[index] = proc
        else:
            self.procs.append(proc)
        return proc

    @property
    def target(self) -> str:
        return "ipv4:" + ",".join(p.target for p in self.procs)

    def counts(self, method: str = "Classify") -> list[float]:
        return [handled(p.metrics_port, method) if p.proc.poll() is None else float("nan") for p in self.procs]


@pytest.fixture(scope="module")
def replicas(vit_tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    root = tmp_path_factory.mktemp("lb")
    (root / "heads").mkdir()
    group = Replicas(vit_tiny_dir, root / "heads", root)
    try:
        for i in range(3):
            group.start(i)
        yield group
    finally:
        for proc in group.procs:
            proc.kill()
            proc.__exit__(None, None, None)


@contextlib.contextmanager
def balanced_channel(target: str) -> Iterator[vit_pb2_grpc.VitServiceStub]:
    """The gateway's channel settings on a plain client channel."""
    with grpc.insecure_channel(target, options=channel_options()) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield vit_pb2_grpc.VitServiceStub(channel)


def test_calls_spread_over_all_three_replicas(replicas: Replicas) -> None:
    before = replicas.counts()
    with balanced_channel(replicas.target) as stub:
        stub.Classify(CLASSIFY, timeout=30)  # connects every subchannel
        time.sleep(0.5)
        for _ in range(60):
            stub.Classify(CLASSIFY, timeout=30)
    got = [after - b for after, b in zip(replicas.counts(), before, strict=True)]
    assert sum(got) == 61
    # round_robin over READY subchannels: an even split once all three are connected (first call aside).
    assert all(n >= 15 for n in got), f"per-replica Classify counts {got}: not spread over all three"


def test_a_replica_killed_mid_load_is_routed_around(replicas: Replicas) -> None:
    total, victim = 150, 2
    done = itertools.count(1)
    killed = threading.Event()
    victim_served: list[float] = []  # Classify calls the victim answered before it died
    before = replicas.counts()
    codes: list[grpc.StatusCode] = []

    with balanced_channel(replicas.target) as stub:
        stub.Classify(CLASSIFY, timeout=30)

        def one(_: int) -> grpc.StatusCode:
            try:
                stub.Classify(CLASSIFY, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            if next(done) == total // 3 and not killed.is_set():
                victim_before = handled(replicas.procs[victim].metrics_port)
                replicas.procs[victim].kill()  # SIGKILL: no drain, in-flight calls die with the process
                victim_served.append(victim_before - before[victim])
                killed.set()
            return code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(one, range(total)))
    assert killed.is_set()
    failed = [c for c in codes if c != grpc.StatusCode.OK]
    assert not failed, f"{len(failed)} of {total} idempotent calls failed: {sorted({c.name for c in failed})}"
    after = replicas.counts()
    survivors = [after[i] - before[i] for i in range(3) if i != victim]
    assert victim_served[0] > 0, "the victim was not in rotation before it died"
    assert all(n > victim_served[0] for n in survivors), f"survivors {survivors} did not take over"

    # A replica started again on the dead one's address rejoins the rotation of a long-lived channel.
    port = int(replicas.procs[victim].target.rsplit(":", 1)[1])
    replicas.start(victim, port=port)
    with balanced_channel(replicas.target) as stub:
        base = handled(replicas.procs[victim].metrics_port)

        def rejoined() -> bool:
            stub.Classify(CLASSIFY, timeout=30)
            return handled(replicas.procs[victim].metrics_port) > base

        wait_until(rejoined, 60, "sending calls to the restarted replica")


class TcpProxy:
    """An L4 proxy on 127.0.0.1 that picks a backend per NEW connection, round-robin, like kube-proxy behind a
    ClusterIP. A gRPC client sees one address and keeps one connection: it stays on that backend."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = list(backends)
        self._next = itertools.count()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self.backends[next(self._next) % len(self.backends)]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def __enter__(self) -> TcpProxy:
        self._thread.start()

        async def start() -> int:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            return self._server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _vit(vit_tiny_dir: Path, **kw: object) -> InProcessServer:
    from services.vit.config import VitConfig
    from services.vit.server import create_server

    return InProcessServer(create_server, VitConfig.from_env(
        {}, model=str(vit_tiny_dir), torch_threads=1, port=0, metrics_port=0, host="127.0.0.1",
        metrics_host="127.0.0.1", drain_delay_s=0.0, log_format="text", **kw))


def _new_replica_share(first: InProcessServer, new: InProcessServer, seconds: float) -> float:
    """Call through a proxy that knows only ``first``; add ``new`` to it; call for ``seconds``; return how many
    of those calls ``new`` handled."""
    with TcpProxy([first.port]) as proxy, balanced_channel(f"127.0.0.1:{proxy.port}") as stub:
        stub.Classify(CLASSIFY, timeout=30)
        proxy.backends.append(new.port)  # a new pod behind the same ClusterIP
        base = handled(new.server.metrics_port)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            stub.Classify(CLASSIFY, timeout=30)
            if handled(new.server.metrics_port) > base:
                break
            time.sleep(0.05)
        return handled(new.server.metrics_port) - base


def test_max_connection_age_lets_a_pinned_client_reach_a_new_replica(vit_tiny_dir: Path) -> None:
    with _vit(vit_tiny_dir) as new:
        with _vit(vit_tiny_dir, max_connection_age_s=0.0) as forever:
            assert _new_replica_share(forever, new, seconds=6) == 0, "without max_connection_age: pinned"
        # The server sends GOAWAY after 2 s (+1 s grace); the client reconnects and the proxy picks the new one.
        with _vit(vit_tiny_dir, max_connection_age_s=2.0, max_connection_age_grace_s=1.0) as aging:
            assert _new_replica_share(aging, new, seconds=20) > 0, "max_connection_age did not rebalance"


# -- the same through the gateway --------------------------------------------------------------------------------
def _compare(stub: gateway_pb2_grpc.GatewayServiceStub) -> gateway_pb2.Comparison:
    request = gateway_pb2.CompareRequest(model_ids=["vit-base-patch16-224", "stable-diffusion-3.5-large"],
                                         probes=gateway_pb2.ProbeOptions(live=True))
    return stub.Compare(request, timeout=300).comparison


def _vit_probe_outcomes(metrics_port: int) -> dict[str, float]:
    m = scrape_metrics(metrics_port)
    return {result: sum(v for k, v in m.items() if k.startswith("versus_gateway_probe_runs_total{")
                        and 'probe="vit.' in k and f'result="{result}"' in k)
            for result in ("ok", "failed", "unavailable")}


def test_the_gateway_balances_over_the_replicas_and_routes_around_a_dead_one(
        replicas: Replicas, tmp_path: Path) -> None:
    env = {"GATEWAY_VIT": replicas.target, "GATEWAY_SD35": "", "GATEWAY_RANKER": "", "GATEWAY_HTTP_PORT": "-1",
           "GATEWAY_CACHE_TTL_S": "0", "GATEWAY_DRAIN_DELAY_S": "0", "GATEWAY_LOG_FORMAT": "text"}
    before = replicas.counts()
    with ServiceProcess("gateway", [], env=env, log_path=tmp_path / "gateway.log") as gateway, \
            grpc.insecure_channel(gateway.target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for _ in range(2):
            _compare(stub)
        spread = [a - b for a, b in zip(replicas.counts(), before, strict=True)]
        assert all(n > 0 for n in spread), f"the gateway's Classify calls per replica: {spread}"
        outcomes = _vit_probe_outcomes(gateway.metrics_port)
        assert outcomes["ok"] >= 8 and outcomes["failed"] == outcomes["unavailable"] == 0, outcomes

        replicas.procs[0].kill()  # the gateway's channel still lists its address
        for _ in range(2):
            comparison = _compare(stub)
            # vit.precision is unavailable by configuration (no second precision deployed), not by the outage.
            lost = [u for u in comparison.unavailable
                    if u.component.startswith("vit") and u.component != "vit.precision"]
            assert not lost, lost
        after = _vit_probe_outcomes(gateway.metrics_port)
        assert after["ok"] >= outcomes["ok"] + 8 and after["failed"] == after["unavailable"] == 0, after
        errors = metric_sum(scrape_metrics(gateway.metrics_port), "versus_gateway_downstream_errors_total",
                            component="vit")
        assert errors == 0, f"{errors} vit calls failed in the gateway after a replica died"
