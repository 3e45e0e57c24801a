"""Shared by bench/sd35.py (CPU, tiny) and bench/gpu_sd35.py: the raw pipeline call and the same
request through the SD3.5 service (in-process gRPC server, real channel), timed in the same run."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from dataclasses import dataclass

import grpc
import torch
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc

from services.sd35.config import Sd35Config
from services.sd35.convert import VARIANT_TO_PROTO
from services.sd35.server import create_server


@dataclass(frozen=True)
class Case:
    name: str
    variant: str
    size: int
    steps: int
    guidance: float
    skip_layers: tuple[int, ...] = ()
    prompt: str = "a photo of a red fox in the snow, golden hour"
    seed: int = 1234


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_raw(pipe, case: Case, device: torch.device) -> float:
    """Seconds for one raw ``pipeline(...)`` call returning PIL images."""
    sync(device)
    t0 = time.perf_counter()
    pipe(prompt=case.prompt, height=case.size, width=case.size, num_inference_steps=case.steps,
         guidance_scale=case.guidance, generator=[torch.Generator(device).manual_seed(case.seed)],
         skip_guidance_layers=list(case.skip_layers) or None)
    sync(device)
    return time.perf_counter() - t0


class _Timed:
    stub: sd35_pb2_grpc.Sd35ServiceStub

    def time(self, case: Case) -> tuple[float, sd35_pb2.Result]:
        request = sd35_pb2.GenerateRequest(prompt=case.prompt, variant=VARIANT_TO_PROTO[case.variant], width=case.size,
                                           height=case.size, steps=case.steps, guidance_scale=case.guidance,
                                           seed=case.seed)
        t0 = time.perf_counter()
        result = None
        for event in self.stub.Generate(request, timeout=1800):
            if event.WhichOneof("event") == "result":
                result = event.result
        return time.perf_counter() - t0, result


class ProcessHarness(_Timed):
    """``versus serve sd35`` as its own process (how clients meet it), on the given model directories."""

    def __init__(self, model_args: list[str], extra: list[str]) -> None:
        from versus_cli.launch import ServiceProcess

        self.process = ServiceProcess("sd35", [*model_args, *extra]).start(timeout_s=600)
        self.channel = grpc.insecure_channel(self.process.target)
        self.stub = sd35_pb2_grpc.Sd35ServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.process.terminate()


class ServiceHarness(_Timed):
    """The SD3.5 service in this process, serving the given in-memory pipelines (GPU bench: no copy of
    8B parameters through the disk)."""

    def __init__(self, pipelines: dict, default_size: int, device: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = Sd35Config.from_env({}, models=tuple(f"{v}=in-memory" for v in pipelines), port=0, metrics_port=-1,
                                     host="127.0.0.1", drain_delay_s=0.0, default_size=default_size, device=device,
                                     log_level="WARNING")

        async def start():
            server, port = create_server(config, pipelines=pipelines)
            await server.start()
            return server, port

        self.server, self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(1800)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}",
                                             options=[("grpc.max_receive_message_length", 256 << 20)])
        self.stub = sd35_pb2_grpc.Sd35ServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=5, drain_delay=0), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)


def interleaved(pipe, harness: _Timed, case: Case, device: torch.device, repeats: int) -> dict:
    """Alternate raw and service runs (after one warm-up of each); medians and their ratio."""
    time_raw(pipe, case, device)
    harness.time(case)
    raw, svc = [], []
    breakdown = None
    for _ in range(repeats):
        raw.append(time_raw(pipe, case, device))
        elapsed, result = harness.time(case)
        svc.append(elapsed)
        breakdown = result.timings
    r, s = statistics.median(raw), statistics.median(svc)
    # The median of per-pair ratios resists drift in machine speed better than a ratio of medians.
    ratio = statistics.median(b / a for a, b in zip(raw, svc, strict=True))
    return {"case": case.name, "raw_s": r, "service_s": s, "ratio": ratio, "repeats": repeats,
            "timings_ms": {"text_encoding": breakdown.text_encoding_ms, "denoising": breakdown.denoising_ms,
                           "decode": breakdown.decode_ms, "encode": breakdown.encode_ms}}
