"""``make demo``: build the models, start the ViT service as a real process, classify the held-out
digits through gRPC and print accuracy, latency and a metrics excerpt."""

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
    from services.vit.builders import BUILDERS

    out = models_dir / name
    if not (out / "model.safetensors").exists():
        print(f"building {name} into {out} ...", flush=True)
        started = time.perf_counter()
        BUILDERS[name](out)
        print(f"built {name} in {time.perf_counter() - started:.0f}s", flush=True)
    return out


def _png(image) -> bytes:  # noqa: ANN001 - PIL image
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
    from services.vit.builders import digits_splits
    from versus.common.v1 import common_pb2
    from versus.launch import ServiceProcess
    from versus.vit.v1 import vit_pb2, vit_pb2_grpc

    model = _ensure_model("vit-digits", models_dir)
    _, held = digits_splits()
    images = [_png(img) for img in held.images]
    print(f"starting the vit service on {model} ...", flush=True)
    log_path = models_dir / "vit-demo.log"
    with ServiceProcess("vit", ["--model", str(model), "--torch-threads", "1", "--drain-delay-s", "0"],
                        log_path=log_path) as svc:
        print(f"vit SERVING on {svc.target} (metrics on :{svc.metrics_port}; log {log_path})", flush=True)
        with grpc.insecure_channel(svc.target) as channel:
            stub = vit_pb2_grpc.VitServiceStub(channel)

            def one(i: int) -> tuple[int, str, float]:
                t0 = time.perf_counter()
                reply = stub.Classify(vit_pb2.ClassifyRequest(images=[common_pb2.Image(data=images[i])], top_k=1), timeout=30)
                return i, reply.results[0].labels[0].label, (time.perf_counter() - t0) * 1e3

            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:  # 8 concurrent clients, one image per request
                results = list(pool.map(one, range(len(images))))
            wall = time.perf_counter() - started
        correct = sum(label == str(held.labels[i]) for i, label, _ in results)
        latencies = sorted(ms for _, _, ms in results)
        accuracy = correct / len(results)
        figures = {
            "model": "vit-digits", "held_out_images": len(results), "accuracy": round(accuracy, 4),
            "latency_ms_p50": round(statistics.median(latencies), 2),
            "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
            "throughput_img_s": round(len(results) / wall, 1), "concurrent_clients": 8,
        }
        print(f"\nheld-out digits through gRPC: {correct}/{len(results)} correct = {accuracy:.2%}")
        print(f"latency p50 {figures['latency_ms_p50']} ms, p95 {figures['latency_ms_p95']} ms; "
              f"{figures['throughput_img_s']} img/s with 8 concurrent clients")
        print("\nmetrics excerpt:")
        for line in _metrics_excerpt(svc.metrics_port):
            print("  " + line)
    print(f"\nvit service drained and exited with code {svc.proc.returncode}")
    if json_out:
        Path(json_out).write_text(json.dumps(figures, indent=2))
    return 0 if accuracy >= 0.95 and svc.proc.returncode == 0 else 1
