"""ViT-B/16 on a GPU: bf16 through the service at 256 concurrent batch-1 clients ÷ raw forward at the best
batch → JSON + docs/BENCHMARKS.md (section ``vit-gpu``). Prepared for a GPU machine; ``--tiny`` is a
CPU dry run (vit-tiny, 16 clients) that checks the script itself.

    python bench/gpu_vit.py [--out DIR] [--clients 256] [--requests 4096] [--tiny]

1. Raw: vit-base-random (google/vit-base-patch16-224's architecture) in bf16 on CUDA, forward only with
   the pixels already on the GPU, batch 1..256; and the CPU side alone — decode + processor per image
   on ``--preprocess-threads`` threads — which bounds what any server can feed the GPU.
2. Service: ``versus serve vit --device cuda --precision bf16`` (torch), then ``--backend onnx`` when the
   installed onnxruntime has the CUDA execution provider; clients in ``--client-procs`` processes
   (grpc.aio, so the client is not the bottleneck), each request one 224² image.
3. Fastest client path: the same load with 224² JPEG instead of PNG (cheaper to decode, no resize).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import git_rev, machine, reexec_with, write_section  # noqa: E402
from versus_cli.launch import SERVICE_ENV  # noqa: E402


def images(n: int, size: int, fmt: str) -> list[bytes]:
    import numpy as np
    from PIL import Image

    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        grad = np.linspace(0, 255, size)[None, :, None] * np.ones((size, 1, 3))
        arr = np.clip(grad * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


# -- raw ----------------------------------------------------------------------------------------------
def raw_forward(model_dir: Path, device: str, precision: str, batches: list[int]) -> dict[int, float]:
    """img/s of the forward alone (pixels on the device), per batch size."""
    import torch

    from services.vit.torch_engine import TorchEngine

    model = TorchEngine(str(model_dir), precision=precision, device=device)
    model.load()
    size = model.image_size
    out = {}
    for batch in batches:
        x = torch.randn(batch, 3, size, size, device=model.device)
        for _ in range(3):
            model.forward_torch(x)
        _sync(device)
        reps = max(3, min(50, 2048 // batch))
        t0 = time.perf_counter()
        for _ in range(reps):
            model.forward_torch(x)
        _sync(device)
        out[batch] = batch * reps / (time.perf_counter() - t0)
        print(f"raw forward batch {batch}: {out[batch]:.0f} img/s", flush=True)
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cpu_preprocess_rate(model_dir: Path, data: list[bytes], threads: int, seconds: float = 5.0) -> float:
    """Images per second the CPU decodes and preprocesses on ``threads`` threads (the service's pool work)."""
    from services.vit.images import decode_image
    from services.vit.torch_engine import TorchEngine

    model = TorchEngine(str(model_dir), device="cpu")
    model.load_processor()
    count = [0] * threads
    stop = time.perf_counter() + seconds

    def work(t: int) -> None:
        i = t
        while time.perf_counter() < stop:
            model.preprocess(decode_image(data[i % len(data)], "x", max_pixels=10**8, min_side=1))
            count[t] += 1
            i += threads

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    return sum(count) / seconds


# -- load ---------------------------------------------------------------------------------------------
def _client_proc(target: str, data: list[bytes], concurrency: int, requests: int, queue) -> None:
    import grpc
    from versus.common.v1 import common_pb2
    from versus.vit.v1 import vit_pb2, vit_pb2_grpc

    async def run() -> list[float]:
        latencies: list[float] = []
        async with grpc.aio.insecure_channel(target) as channel:
            stub = vit_pb2_grpc.VitServiceStub(channel)
            reqs = [vit_pb2.ClassifyRequest(images=[common_pb2.Image(data=d)], top_k=5) for d in data]
            todo = iter(range(requests))

            async def one() -> None:
                for i in todo:
                    t0 = time.perf_counter()
                    await stub.Classify(reqs[i % len(reqs)], timeout=600)
                    latencies.append((time.perf_counter() - t0) * 1e3)

            await asyncio.gather(*(one() for _ in range(concurrency)))
        return latencies

    queue.put(asyncio.run(run()))


def drive(target: str, data: list[bytes], clients: int, requests: int, procs: int) -> tuple[float, float]:
    """(img/s, p50 ms) with ``clients`` concurrent batch-1 callers spread over ``procs`` processes."""
    ctx = multiprocessing.get_context("spawn")

    def round_(n: int) -> tuple[float, list[float]]:
        queue = ctx.Queue()
        workers = [ctx.Process(target=_client_proc, args=(target, data, clients // procs, n // procs, queue))
                   for _ in range(procs)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        latencies = [x for _ in workers for x in queue.get()]
        wall = time.perf_counter() - t0
        for w in workers:
            w.join()
        return len(latencies) / wall, latencies

    round_(clients)  # warm-up (also pays the client processes' start-up, excluded below)
    rate, latencies = round_(requests)
    return rate, statistics.median(latencies)


def serve_and_drive(args: list[str], data: list[bytes], clients: int, requests: int,
                    procs: int) -> tuple[float, float]:
    from versus_cli.launch import ServiceProcess

    with tempfile.TemporaryDirectory() as tmp, ServiceProcess("vit", args, log_path=Path(tmp) / "vit.log") as svc:
        return drive(svc.target, data, clients, requests, procs)


def onnx_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


# -- main ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=str(ROOT / ".models"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench"))
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--requests", type=int, default=4096)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--preprocess-threads", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="CPU dry run with vit-tiny")
    args = parser.parse_args()
    reexec_with(SERVICE_ENV)
    import torch

    from services.vit.builders import BUILDERS

    tiny = args.tiny
    device, precision = ("cpu", "fp32") if tiny else ("cuda", "bf16")
    if not tiny and not torch.cuda.is_available():
        sys.exit("bench/gpu_vit.py needs a CUDA device (use --tiny for a CPU dry run)")
    clients, requests = (16, 128) if tiny else (args.clients, args.requests)
    procs = min(args.client_procs, clients)
    name = "vit-tiny" if tiny else "vit-base-random"
    model_dir = Path(args.models_dir) / name
    if not (model_dir / "model.safetensors").exists():
        BUILDERS[name](model_dir)
    png, jpeg = images(64, 224, "PNG"), images(64, 224, "JPEG")
    started = time.perf_counter()

    batches = [1, 8, 32] if tiny else [1, 8, 32, 64, 128, 256]
    raw = raw_forward(model_dir, device, precision, batches)
    best_batch = max(raw, key=raw.get)
    cpu_png = cpu_preprocess_rate(model_dir, png, args.preprocess_threads)
    cpu_jpeg = cpu_preprocess_rate(model_dir, jpeg, args.preprocess_threads)
    common = ["--model", str(model_dir), "--device", device, "--precision", precision,
              "--max-batch-size", str(max(batches)), "--max-wait-ms", "2", "--max-queue", str(4 * clients),
              "--preprocess-threads", str(args.preprocess_threads), "--max-concurrent-rpcs", str(4 * clients),
              "--drain-delay-s", "0", "--log-level", "WARNING"]
    runs = {"torch, PNG": serve_and_drive(common, png, clients, requests, procs),
            "torch, JPEG": serve_and_drive(common, jpeg, clients, requests, procs)}
    if onnx_has_cuda() and not tiny:
        from services.vit.onnx_export import export_onnx

        onnx_dir = Path(args.models_dir) / f"{name}-onnx"
        if not (onnx_dir / "model.onnx").exists():
            export_onnx(model_dir, onnx_dir)
        onnx_args = [a if a != str(model_dir) else str(onnx_dir) for a in common]
        onnx_args[onnx_args.index("--precision") + 1] = "auto"
        runs["onnxruntime CUDA fp32, PNG"] = serve_and_drive([*onnx_args, "--backend", "onnx"], png, clients,
                                                              requests, procs)
    result = {"machine": machine(), "commit": git_rev(), "model": name, "device": device, "precision": precision,
              "clients": clients, "requests": requests, "raw_forward_img_s": raw, "best_batch": best_batch,
              "cpu_preprocess_img_s": {"png": cpu_png, "jpeg": cpu_jpeg}, "preprocess_threads": args.preprocess_threads,
              "service": {k: {"img_s": v[0], "p50_ms": v[1]} for k, v in runs.items()},
              "seconds": time.perf_counter() - started}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu_vit{'_tiny' if tiny else ''}.json").write_text(json.dumps(result, indent=2))
    report(result, tiny)


def report(r: dict, tiny: bool) -> None:
    best = r["raw_forward_img_s"][r["best_batch"]]
    lines = [
        f"## ViT-B/16 on a GPU: {r['precision']} through the service, {r['clients']} concurrent batch-1 clients",
        "",
        f"Command: `python bench/gpu_vit.py{' --tiny' if tiny else ''}` (commit {r['commit']}). Machine: "
        f"{r['machine']}. Model `{r['model']}` (random weights), device {r['device']}.",
        "",
        "| path | img/s | p50 ms | ÷ raw forward at best batch |",
        "|---|---:|---:|---:|",
        f"| raw forward, batch {r['best_batch']} (pixels on the device) | {best:.0f} | | 1.00 |",
        *[f"| service: {k} | {v['img_s']:.0f} | {v['p50_ms']:.1f} | {v['img_s'] / best:.2f} |"
          for k, v in r["service"].items()],
        "",
        f"- CPU decode + preprocess alone on {r['preprocess_threads']} threads: "
        f"{r['cpu_preprocess_img_s']['png']:.0f} img/s (224² PNG), {r['cpu_preprocess_img_s']['jpeg']:.0f} img/s "
        "(224² JPEG). Where this is below the raw forward, the CPU side bounds the service, not the GPU; "
        "the fastest client path is pre-resized (224²) JPEG.",
    ]
    if not tiny:  # a dry run checks the script; its figures do not belong in the docs
        write_section("vit-gpu", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
