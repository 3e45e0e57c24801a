"""``make demo``: build the models, start the vit, sd35 and ranker services as real processes, then
classify the held-out digits through gRPC (accuracy, latency, metrics excerpt), generate an image with
live progress, and print the ranker's scores for vit-base-patch16-224 vs Stable Diffusion 3.5 Large."""

from __future__ import annotations

import io
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc


def _ensure_model(name: str, models_dir: Path) -> Path:
    from versus_cli.models import build_model

    out = models_dir / name
    if not (out / "model.safetensors").exists() and not (out / "model_index.json").exists():
        print(f"building {name} into {out} ...", flush=True)
        started = time.perf_counter()
        build_model(name, out)
        print(f"built {name} in {time.perf_counter() - started:.0f}s", flush=True)
    return out


def _png(image) -> bytes:  # PIL image
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _metrics_excerpt(port: int) -> list[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    keep = ("grpc_server_handled_total{", "grpc_server_handling_seconds_count", "versus_batch_size_sum",
            "versus_batch_size_count", "versus_items_processed_total", "versus_queue_seconds_sum",
            "versus_compute_seconds_sum", "versus_model_ready")
    return [line for line in text.splitlines() if line.startswith(keep)]


def run_demo(models_dir: Path, json_out: str = "") -> int:
    from versus_cli.launch import ServiceProcess

    vit_model = _ensure_model("vit-digits", models_dir)
    sd_model = _ensure_model("sd35-large-tiny", models_dir)
    common = ["--torch-threads", "1", "--drain-delay-s", "0"]
    services = {
        "vit": ServiceProcess("vit", ["--model", str(vit_model), *common], log_path=models_dir / "vit-demo.log"),
        "sd35": ServiceProcess("sd35", ["--model", f"large={sd_model}", "--default-size", "128", *common],
                               log_path=models_dir / "sd35-demo.log"),
        "ranker": ServiceProcess("ranker", ["--db", f"sqlite:///{models_dir / 'demo-ranker.db'}", *common],
                                 log_path=models_dir / "ranker-demo.log"),
    }
    try:
        for name, svc in services.items():
            svc.start()  # a start-up failure raises ServiceStartError with the service's own error and log
            print(f"{name} SERVING on {svc.target} (metrics on :{svc.metrics_port}; log {svc.log_path})", flush=True)
        figures = _vit_part(services["vit"])
        figures["generation"] = _sd35_part(services["sd35"], models_dir)
        _ranker_part(services["ranker"])
    finally:
        codes = {name: svc.stop() for name, svc in services.items() if svc.started}
    print(f"\nservices drained and exited with codes {codes}", flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps(figures, indent=2))
    return 0 if figures["accuracy"] >= 0.95 and not any(codes.values()) else 1


def _sd35_part(svc, models_dir: Path) -> dict:  # versus_cli.launch.ServiceProcess
    from versus.sd35.v1 import sd35_pb2

    from services.common.client import ClientSettings
    from versus_cli.calls import generate_images, progress_bar

    print("\n== sd35: text-to-image through the service (tiny Large pipeline, random weights) ==", flush=True)
    request = sd35_pb2.GenerateRequest(prompt="a photo of a tench, golden hour", width=128, height=128, steps=28,
                                       seed=2024, variant=sd35_pb2.VARIANT_LARGE)

    def show(event) -> None:
        if event.WhichOneof("event") == "progress":
            p = event.progress
            print(progress_bar(p.step, p.total_steps, p.elapsed_ms), end="", flush=True)

    result = generate_images(ClientSettings(svc.target), request, timeout=120, on_event=show)
    out = models_dir / "demo-tench.png"
    out.write_bytes(result.images[0].data)
    t = result.timings
    print(f"\nwrote {out}: seed {result.seeds[0]}, {result.steps} steps, guidance {result.guidance_scale:.1f}, "
          f"{result.width}x{result.height}; text {t.text_encoding_ms:.0f} ms, denoising {t.denoising_ms:.0f} ms, "
          f"decode {t.decode_ms:.0f} ms, encode {t.encode_ms:.0f} ms", flush=True)
    return {"file": str(out), "seed": result.seeds[0], "steps": result.steps, "total_ms": round(t.total_ms, 1)}


def _ranker_part(svc) -> None:  # versus_cli.launch.ServiceProcess
    import subprocess
    import sys

    print("\n== ranker: vit-base-patch16-224 vs stable-diffusion-3.5-large ==", flush=True)
    subprocess.run([sys.executable, "-m", "versus_cli", "rank", "--target", svc.target, "vit-base-patch16-224",
                    "stable-diffusion-3.5-large"], check=True)


def _vit_part(svc) -> dict:  # versus_cli.launch.ServiceProcess
    from versus.common.v1 import common_pb2
    from versus.vit.v1 import vit_pb2, vit_pb2_grpc

    from services.vit.builders import digits_splits

    print("\n== vit: held-out digits through gRPC ==", flush=True)
    _, held = digits_splits()
    images = [_png(img) for img in held.images]
    with grpc.insecure_channel(svc.target) as channel:
        stub = vit_pb2_grpc.VitServiceStub(channel)

        def one(i: int) -> tuple[int, str, float]:
            t0 = time.perf_counter()
            reply = stub.Classify(
                vit_pb2.ClassifyRequest(images=[common_pb2.Image(data=images[i])], top_k=1), timeout=30
            )
            return i, reply.results[0].labels[0].label, (time.perf_counter() - t0) * 1e3

        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:  # 8 concurrent clients, one image per request
            results = list(pool.map(one, range(len(images))))
        wall = time.perf_counter() - started
    correct = sum(label == str(held.labels[i]) for i, label, _ in results)
    latencies = sorted(ms for _, _, ms in results)
    accuracy = correct / len(results)
    figures = {
        "model": "vit-digits",
        "held_out_images": len(results),
        "accuracy": round(accuracy, 4),
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "throughput_img_s": round(len(results) / wall, 1),
        "concurrent_clients": 8,
    }
    print(f"\nheld-out digits through gRPC: {correct}/{len(results)} correct = {accuracy:.2%}")
    print(
        f"latency p50 {figures['latency_ms_p50']} ms, p95 {figures['latency_ms_p95']} ms; "
        f"{figures['throughput_img_s']} img/s with 8 concurrent clients"
    )
    print("\nmetrics excerpt:")
    for line in _metrics_excerpt(svc.metrics_port):
        print("  " + line)
    return figures
