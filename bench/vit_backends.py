"""ViT backends under load, in one run → docs/BENCHMARKS.md (section ``vit-backends``).

    python bench/vit_backends.py [--quick]

vit-base-random (google/vit-base-patch16-224's architecture), CPU, 2 threads everywhere, 32 concurrent
clients (bench/loadgen.py: asyncio in a process of its own) each sending one 224² PNG per request (the
server decodes and preprocesses):

1. Versus through each backend: torch fp32 / bf16 / int8, ONNX Runtime fp32 / int8 (dynamic), and the
   Triton backend (the bundled tritonserver running the fp32 ONNX model in its Python backend).
2. Each one's own raw in-process baseline: decode + processor + forward of the same engine in this
   process at batch 1, 8 and 32; the best batch's throughput is the denominator.
3. The peer: PyTriton serving the same fp32 model (decode + processor + transformers forward in its
   infer function, dynamic batching) under the same load, alternated with Versus torch fp32.
4. Top-1 agreement with fp32 on the trained vit-digits held-out set (360 images) for ONNX Runtime int8
   and for bf16 (what ``--precision auto`` picks on this CPU).

``--peer-pytriton`` is the internal mode that runs the PyTriton server in its own process.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import oip_request  # noqa: E402
from bench.report import git_rev, machine, reexec_with, run_clients, write_section  # noqa: E402
from bench.vit import sample_png  # noqa: E402
from versus_cli.launch import SERVICE_ENV  # noqa: E402

THREADS = 2
CLIENTS = 32
BATCHES = (1, 8, 32)


@dataclass
class Load:
    """Throughput and latency of one configuration under the client load."""

    img_s: float
    p50_ms: float
    mean_batch: float = 0.0
    client_cpu: float = 0.0  # the load generator's CPU, fraction of one core


# -- load generation ----------------------------------------------------------------------------------
def drive(target: str, method: str, payloads: list[bytes], requests: int, clients: int = CLIENTS) -> Load:
    """``clients`` concurrent callers (bench/loadgen.py: asyncio in its own process) issue ``requests``
    batch-1 calls in all, after one warm-up call each; img/s, p50 latency and the generator's CPU."""
    result = run_clients(target, method, payloads, requests, clients)
    return Load(result.rps, result.p50_ms, client_cpu=result.cpu_share)


def drive_versus(target: str, images: list[bytes], requests: int, metrics_port: int) -> Load:
    from versus.common.v1 import common_pb2
    from versus.vit.v1 import vit_pb2

    reqs = [vit_pb2.ClassifyRequest(images=[common_pb2.Image(data=d)], top_k=5).SerializeToString() for d in images]
    load = drive(target, "/versus.vit.v1.VitService/Classify", reqs, requests)
    load.mean_batch = mean_batch(metrics_port)
    return load


def mean_batch(metrics_port: int) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    sums = {}
    for line in text.splitlines():
        if line.startswith(("versus_batch_size_sum", "versus_batch_size_count")):
            sums[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return sums.get("versus_batch_size_sum", 0.0) / max(1.0, sums.get("versus_batch_size_count", 1.0))


def drive_triton_peer(url: str, images: list[bytes], requests: int) -> Load:
    import numpy as np

    reqs = [oip_request("vit", {"image": ("BYTES", np.array([[d]], dtype=np.object_))}, ("logits",)) for d in images]
    return drive(url, "/inference.GRPCInferenceService/ModelInfer", reqs, requests)


# -- raw baselines ------------------------------------------------------------------------------------
def raw_best(engine, images: list[bytes], reps: dict[int, int]) -> tuple[float, int]:
    """Best (img/s, batch) of decode + processor + forward in this process."""
    import numpy as np
    from PIL import Image

    def once(batch: int) -> float:
        t0 = time.perf_counter()
        decoded = [Image.open(io.BytesIO(images[i % len(images)])).convert("RGB") for i in range(batch)]
        engine.forward(np.stack([engine.preprocess(im) for im in decoded]))
        return time.perf_counter() - t0

    best = (0.0, 1)
    for batch in BATCHES:
        once(batch)  # warm this shape
        ips = batch / statistics.median([once(batch) for _ in range(reps[batch])])
        best = max(best, (ips, batch))
    return best


def torch_engine(model_dir: Path, precision: str):
    from services.vit.torch_engine import TorchEngine

    engine = TorchEngine(str(model_dir), precision=precision, device="cpu", torch_threads=THREADS)
    engine.load()
    return engine


def onnx_engine(export_dir: Path):
    from services.vit.onnx_engine import OnnxEngine

    engine = OnnxEngine(str(export_dir), threads=THREADS)
    engine.load()
    return engine


# -- models -------------------------------------------------------------------------------------------
def prepare_models(models: Path) -> dict[str, Path]:
    from services.vit.builders import BUILDERS
    from services.vit.onnx_export import export_onnx

    for name in ("vit-base-random", "vit-digits"):
        if not (models / name / "model.safetensors").exists():
            BUILDERS[name](models / name)
    paths = {"base": models / "vit-base-random", "digits": models / "vit-digits"}
    for key, source, quantize in (("base-onnx", "base", "none"), ("base-int8", "base", "int8"),
                                  ("digits-int8", "digits", "int8")):
        out = models / f"{paths[source].name}-onnx{'-int8' if quantize == 'int8' else ''}"
        if not (out / "model.onnx").exists():
            export_onnx(paths[source], out, quantize_to=quantize, log_fn=print)
        paths[key] = out
    return paths


def agreement(paths: dict[str, Path]) -> dict[str, float]:
    import numpy as np

    from services.vit.builders import digits_splits

    held = digits_splits()[1]
    tops = {}
    for name, engine in (("fp32", torch_engine(paths["digits"], "fp32")),
                         ("bf16", torch_engine(paths["digits"], "bf16")),
                         ("onnx-int8", onnx_engine(paths["digits-int8"]))):
        tops[name] = engine.forward(np.stack([engine.preprocess(im) for im in held.images])).logits.argmax(1)
    return {k: float(np.mean(v == tops["fp32"])) for k, v in tops.items() if k != "fp32"}


# -- services -----------------------------------------------------------------------------------------
SERVICE_ARGS = ["--max-batch-size", "32", "--max-queue", "512", "--max-images-per-request", "64",
                "--preprocess-threads", "1", "--drain-delay-s", "0", "--log-level", "WARNING"]


def versus_args(model: Path, backend: str, precision: str, *extra: str) -> list[str]:
    return ["--model", str(model), "--backend", backend, "--precision", precision, "--torch-threads", str(THREADS),
            "--onnx-threads", str(THREADS), *SERVICE_ARGS, *extra]


def run_versus(args: list[str], images: list[bytes], requests: int) -> Load:
    from versus_cli.launch import ServiceProcess

    with tempfile.TemporaryDirectory() as tmp, ServiceProcess("vit", args, log_path=Path(tmp) / "vit.log") as svc:
        return drive_versus(svc.target, images, requests, svc.metrics_port)


def run_triton_backend(paths: dict[str, Path], images: list[bytes], requests: int) -> Load:
    from services.vit.triton_repo import RepoOptions, write_repository
    from versus_cli.export import LocalTriton

    with tempfile.TemporaryDirectory() as repo:
        write_repository(paths["base-onnx"], Path(repo), RepoOptions(platform="python", device="cpu",
                                                                     max_batch_size=32, max_queue_delay_us=0,
                                                                     threads=THREADS))
        with LocalTriton(Path(repo)) as triton:
            triton.wait_ready(300, ("vit",))
            args = versus_args(paths["base-onnx"], "triton", "auto", "--triton-url", triton.url,
                               "--triton-model", "vit")
            return run_versus(args, images, requests)


def versus_vs_pytriton(paths: dict[str, Path], images: list[bytes], requests: int,
                       rounds: int) -> dict[str, list[Load]]:
    """Versus torch fp32 (preprocessing on its pool, and on the device thread) and the PyTriton peer,
    all up at once (idle but for the one driven) and driven in alternation."""
    import tritonclient.grpc as tc

    from services.vit.triton_repo import server_environment
    from versus_cli.export import _free_port
    from versus_cli.launch import ServiceProcess

    port = _free_port()
    peer_log = open(Path(tempfile.gettempdir()) / "versus-bench-pytriton.log", "wb")  # noqa: SIM115
    # PyTriton's Python stub needs this interpreter's LIBDIR on LD_LIBRARY_PATH too (else: the system libpython)
    peer = subprocess.Popen([sys.executable, __file__, "--peer-pytriton", str(paths["base"]), str(port)],
                            stdout=peer_log, stderr=subprocess.STDOUT, env=server_environment())
    loads: dict[str, list[Load]] = {"versus-pool": [], "versus-device": [], "pytriton": []}
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                ServiceProcess("vit", versus_args(paths["base"], "torch", "fp32"),
                               log_path=Path(tmp) / "a.log") as pool_svc, \
                ServiceProcess("vit", versus_args(paths["base"], "torch", "fp32", "--preprocess", "device"),
                               log_path=Path(tmp) / "b.log") as device_svc:
            with tc.InferenceServerClient(f"127.0.0.1:{port}") as client:
                deadline = time.monotonic() + 300
                while not _ready(client):
                    if time.monotonic() > deadline or peer.poll() is not None:
                        raise RuntimeError(f"the PyTriton peer did not start (log {peer_log.name})")
                    time.sleep(0.5)
            for _ in range(rounds):
                loads["versus-pool"].append(drive_versus(pool_svc.target, images, requests, pool_svc.metrics_port))
                loads["pytriton"].append(drive_triton_peer(f"127.0.0.1:{port}", images, requests))
                loads["versus-device"].append(
                    drive_versus(device_svc.target, images, requests, device_svc.metrics_port))
    finally:
        peer.terminate()
        peer.wait(60)
        peer_log.close()
    return loads


def _ready(client) -> bool:
    try:
        return bool(client.is_model_ready("vit"))
    except Exception:  # noqa: BLE001 - not up yet
        return False


def serve_pytriton_peer(model_dir: str, port: int) -> None:
    """The peer: PyTriton with decode + processor + transformers forward in its infer function."""
    import numpy as np
    import torch
    from PIL import Image
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from versus_cli.export import _free_port

    torch.set_num_threads(THREADS)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir, use_safetensors=True).eval()

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        decoded = [Image.open(io.BytesIO(row[0])).convert("RGB") for row in image]
        with torch.inference_mode():
            logits = model(processor(images=decoded, return_tensors="pt")["pixel_values"]).logits
        return {"logits": logits.numpy()}

    config = TritonConfig(grpc_port=port, http_port=_free_port(), metrics_port=_free_port(), allow_metrics=False)
    with Triton(config=config) as triton:
        triton.bind(model_name="vit", infer_func=infer, inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
                    outputs=[Tensor(name="logits", dtype=np.float32, shape=(-1,))],
                    config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher()))
        triton.serve()


# -- the run ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=str(ROOT / ".models"))
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats (smoke run)")
    parser.add_argument("--peer-pytriton", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    reexec_with(SERVICE_ENV)
    if args.peer_pytriton:
        serve_pytriton_peer(args.peer_pytriton[0], int(args.peer_pytriton[1]))
        return
    import torch

    torch.set_num_threads(THREADS)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    paths = prepare_models(Path(args.models_dir))
    images = [sample_png(i) for i in range(32)]
    reps = {1: 3, 8: 1, 32: 1} if args.quick else {1: 5, 8: 2, 32: 1}
    requests = 48 if args.quick else 96

    # Each raw baseline is measured right before its service run, so the pair shares the machine's load.
    raw: dict[str, tuple[float, int]] = {"torch fp32": raw_best(torch_engine(paths["base"], "fp32"), images, reps)}
    pair = versus_vs_pytriton(paths, images, requests, rounds=1 if args.quick else 2)
    svc: dict[str, Load] = {}
    for name, make, model, backend, precision in (
        ("torch bf16", lambda: torch_engine(paths["base"], "bf16"), "base", "torch", "bf16"),
        ("torch int8", lambda: torch_engine(paths["base"], "int8"), "base", "torch", "int8"),
        ("onnx fp32", lambda: onnx_engine(paths["base-onnx"]), "base-onnx", "onnx", "auto"),
        ("onnx int8", lambda: onnx_engine(paths["base-int8"]), "base-int8", "onnx", "auto"),
    ):
        raw[name] = raw_best(make(), images, reps)
        svc[name] = run_versus(versus_args(paths[model], backend, precision), images, requests)
        print(f"{name}: raw {raw[name][0]:.2f} img/s (batch {raw[name][1]}), service {svc[name].img_s:.2f} img/s",
              flush=True)
    raw["triton (onnx fp32)"] = raw_best(onnx_engine(paths["base-onnx"]), images, reps)
    svc["triton (onnx fp32)"] = run_triton_backend(paths, images, requests)
    svc["torch fp32"] = _median_load(pair["versus-pool"])
    svc["torch fp32, preprocess=device"] = _median_load(pair["versus-device"])
    raw["torch fp32, preprocess=device"] = raw["torch fp32"]
    peer = _median_load(pair["pytriton"])
    agree = agreement(paths)
    loads = (load_before, os.getloadavg()[0])
    write_report(args.quick, raw, svc, peer, pair, agree, time.perf_counter() - started, loads)


def _median_load(loads: list[Load]) -> Load:
    return Load(statistics.median(x.img_s for x in loads), statistics.median(x.p50_ms for x in loads),
                statistics.median(x.mean_batch for x in loads), statistics.median(x.client_cpu for x in loads))


def write_report(quick: bool, raw: dict, svc: dict[str, Load], peer: Load, pair: dict, agree: dict,
                 seconds: float, loadavg: tuple[float, float]) -> None:
    order = ["torch fp32", "torch fp32, preprocess=device", "torch bf16", "torch int8", "onnx fp32", "onnx int8",
             "triton (onnx fp32)"]
    int8_x = svc["onnx int8"].img_s / svc["torch fp32"].img_s
    vs_peer = svc["torch fp32"].img_s / peer.img_s
    vs_peer_dev = svc["torch fp32, preprocess=device"].img_s / peer.img_s
    rounds = " / ".join(f"{a.img_s:.2f} vs {b.img_s:.2f}" for a, b in zip(pair["versus-pool"], pair["pytriton"],
                                                                          strict=True))
    cpus = sorted([x.client_cpu for x in svc.values()] + [peer.client_cpu])
    cpu_text = f"{statistics.median(cpus):.1%} (range {cpus[0]:.1%}–{cpus[-1]:.1%})"
    lines = [
        "## ViT backends under load (`vit-base-random`, CPU, 32 concurrent batch-1 clients)",
        "",
        f"Command: `python bench/vit_backends.py{' --quick' if quick else ''}` (commit {git_rev()}, "
        f"{seconds / 60:.1f} min). Machine: {machine()}.",
        f"{THREADS} threads for torch / ONNX Runtime everywhere (raw runs, services, Triton's model, the PyTriton "
        "peer); each client sends one 224² PNG per request and the server decodes and preprocesses it. "
        "Raw = decode + processor + forward of the same engine in one process, best of batch 1/8/32, measured "
        "right before that engine's service run (the machine is shared and its load drifts: 1-minute load "
        f"average {loadavg[0]:.1f} at the start, {loadavg[1]:.1f} at the end, on {os.cpu_count()} CPUs).",
        "The 32 clients are `bench/loadgen.py`: asyncio coroutines on one thread in a process of their own (no "
        "longer 32 threads inside the measuring process, whose CPU was charged to the service), sending "
        f"pre-serialized requests; the load generator used {cpu_text} of one core over the measured runs.",
        "",
        "| backend | service img/s | p50 ms | mean batch | raw best img/s (batch) | service ÷ raw |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {n} | {svc[n].img_s:.2f} | {svc[n].p50_ms:.0f} | {svc[n].mean_batch:.1f} | {raw[n][0]:.2f} "
          f"({raw[n][1]}) | {svc[n].img_s / raw[n][0]:.2f} |" for n in order],
        f"| PyTriton peer (torch fp32) | {peer.img_s:.2f} | {peer.p50_ms:.0f} | | {raw['torch fp32'][0]:.2f} "
        f"({raw['torch fp32'][1]}) | {peer.img_s / raw['torch fp32'][0]:.2f} |",
        "",
        f"- Versus torch fp32 ÷ PyTriton: {vs_peer:.2f} (preprocessing on the pool thread; rounds, alternated: "
        f"{rounds} img/s); with `--preprocess device`: {vs_peer_dev:.2f} (target ≥ 1.0).",
        f"- ONNX Runtime int8 ÷ torch fp32, both through the service: {int8_x:.2f}×** (target ≥ 3×).",
        f"- Top-1 agreement with fp32 on vit-digits' 360 held-out images: ONNX Runtime int8 (dynamic) "
        f"{agree['onnx-int8']:.2%}, bf16 (`--precision auto` on this CPU) {agree['bf16']:.2%}.",
    ]
    write_section("vit-backends", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
