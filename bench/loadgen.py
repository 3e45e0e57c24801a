"""The benchmarks' load generator: its own process, asyncio on one event-loop thread, raw request bytes.

Why a process of its own: client threads inside the measuring process (the old harness: 32 of them)
compete with the service for the same two cores and their CPU is charged to the service. Here the
clients are coroutines in a child process, the requests are serialized once by the parent (the child
sends bytes: no protobuf work per call), and the child reports the CPU it used, so each figure can
say what its load cost.

    result = run_clients(target, "/versus.vit.v1.VitService/Classify", [request.SerializeToString()],
                         requests=96, clients=32)
    result.rps, result.p50_ms, result.cpu_share

Closed loop (``clients`` callers, each sending its next call when its last one returned) by default; with
``rate`` an open loop: call i is sent at start + i / rate whatever is still outstanding, and its latency counts
from that moment (a late send counts against the latency, as in wrk2), so a slow reply cannot slow the load
down and hide itself (coordinated omission).

``python bench/loadgen.py SPEC OUT`` is the child (pickled spec in, pickled result out); it imports
only grpc.
"""

from __future__ import annotations

import asyncio
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class LoadSpec:
    target: str
    method: str  # full gRPC method name, e.g. /inference.GRPCInferenceService/ModelInfer
    payloads: list[bytes]  # serialized requests; call i sends payloads[i % len(payloads)]
    requests: int
    clients: int
    metadata: tuple[tuple[str, str], ...] = ()
    warmup: int = -1  # unmeasured calls first (-1: one per client)
    keep_responses: bool = False
    timeout_s: float = 600.0
    rate: float = 0.0  # > 0: open loop at this many calls a second (``clients`` then only sizes the warm-up)


@dataclass
class LoadResult:
    wall_s: float
    latencies_ms: list[float]
    cpu_s: float  # user + system CPU of the load generator process during the measured part
    responses: list[bytes] = field(default_factory=list)  # (kept only when asked) in completion order
    errors: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.wall_s

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def cpu_share(self) -> float:
        """CPU the load generator used, as a fraction of one core over the measured wall time."""
        return self.cpu_s / self.wall_s


async def _drive(spec: LoadSpec) -> LoadResult:
    import grpc

    options = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    async with grpc.aio.insecure_channel(spec.target, options=options) as channel:
        call = channel.unary_unary(spec.method)  # no serializers: bytes in, bytes out
        errors: list[str] = []

        async def one(i: int, due: float = 0.0) -> tuple[float, bytes]:
            t0 = due or time.perf_counter()
            try:
                reply = await call(spec.payloads[i % len(spec.payloads)], timeout=spec.timeout_s,
                                   metadata=spec.metadata or None)
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                reply = b""
            return (time.perf_counter() - t0) * 1e3, reply

        warmup = spec.clients if spec.warmup < 0 else spec.warmup
        await asyncio.gather(*(one(i) for i in range(warmup)))
        errors.clear()
        latencies: list[float] = []
        responses: list[bytes] = []
        counter = iter(range(spec.requests))

        def record(ms: float, reply: bytes) -> None:
            latencies.append(ms)
            if spec.keep_responses:
                responses.append(reply)

        async def client() -> None:
            for i in counter:  # one shared iterator: each call index once, whichever client is free
                record(*await one(i))

        async def paced() -> None:
            start, calls = time.perf_counter(), []
            for i in range(spec.requests):
                due = start + i / spec.rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                calls.append(asyncio.ensure_future(one(i, due)))
            for ms, reply in await asyncio.gather(*calls):
                record(ms, reply)

        cpu0, t0 = time.process_time(), time.perf_counter()
        await (paced() if spec.rate > 0 else asyncio.gather(*(client() for _ in range(spec.clients))))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return LoadResult(wall, latencies, cpu, responses, errors)


def run_clients(target: str, method: str, payloads: list[bytes], requests: int, clients: int, *,
                metadata: tuple[tuple[str, str], ...] = (), keep_responses: bool = False,
                timeout_s: float = 600.0, warmup: int = -1, rate: float = 0.0) -> LoadResult:
    """``clients`` concurrent callers issue ``requests`` calls of ``method`` in all, from a child process
    (after ``warmup`` unmeasured calls; -1: one per client); with ``rate`` > 0 the calls are sent at that rate
    instead (open loop; responses then in send order). Raises if any measured call failed."""
    if rate < 0:
        raise ValueError(f"rate must be >= 0, not {rate}")
    spec = LoadSpec(target, method, payloads, requests, clients, metadata, warmup, keep_responses, timeout_s, rate)
    with tempfile.TemporaryDirectory(prefix="versus-load-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.pkl", Path(tmp) / "out.pkl"
        spec_path.write_bytes(pickle.dumps(asdict(spec)))  # plain dicts: the child is __main__, not bench.loadgen
        subprocess.run([sys.executable, __file__, str(spec_path), str(out_path)], check=True, timeout=timeout_s + 120)
        result = LoadResult(**pickle.loads(out_path.read_bytes()))
    if result.errors:
        raise RuntimeError(f"{len(result.errors)} of {requests} calls failed, e.g. {result.errors[0]}")
    return result


def oip_request(model: str, inputs: dict[str, tuple[str, object]], outputs: tuple[str, ...] = ()) -> bytes:
    """A serialized Open Inference Protocol ModelInferRequest: ``inputs`` maps a name to (datatype, NumPy
    array), sent as raw contents the way tritonclient sends them (used by the parent, never the child)."""
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.utils import serialize_byte_tensor

    request = pb.ModelInferRequest(model_name=model)
    for name, (datatype, array) in inputs.items():
        data = np.asarray(array)
        request.inputs.add(name=name, datatype=datatype, shape=data.shape)
        raw = serialize_byte_tensor(data).item() if datatype == "BYTES" else np.ascontiguousarray(data).tobytes()
        request.raw_input_contents.append(raw)
    for name in outputs:
        request.outputs.add(name=name)
    return request.SerializeToString()


def main() -> None:
    spec_path, out_path = sys.argv[1:3]
    spec = LoadSpec(**pickle.loads(Path(spec_path).read_bytes()))
    Path(out_path).write_bytes(pickle.dumps(asdict(asyncio.run(_drive(spec)))))


if __name__ == "__main__":
    main()
