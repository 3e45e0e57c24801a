"""Versus ÷ Triton over the Open Inference Protocol, same fp32 ONNX ViT, in one run → docs/BENCHMARKS.md
(section ``vit-oip``).

    python bench/vit_oip.py [--quick] [--rounds 5] [--background-load] [--profile]

- Peer: the bundled tritonserver (2.51; its only backend is Python) running ``model.onnx`` of
  vit-base-random (ViT-B/16, fp32) under ONNX Runtime inside its Python backend — the repository
  ``versus triton export --platform python --device cpu`` writes, started as ``versus triton
  serve-local`` starts it — with dynamic batching up to 32, no queue delay, 2 ORT threads.
- Versus: ``versus serve vit --backend onnx`` on the same ``model.onnx``, 2 ORT threads, batches up to 32.
- The same client, protocol and request shape for both: ``bench/loadgen.py`` (asyncio, one thread, its
  own process) sends ModelInfer with one preprocessed 224² image as FP32 [1, 3, 224, 224] raw contents
  and asks for one FP32 [1, 1000] output (Triton's ``logits``; Versus' ``vit-tensor`` ``PROBABILITIES``).
- 1, 8 and 32 concurrent clients; within each round the two servers alternate (order flipped every
  round); medians and ranges over rounds. Versus' time per stage comes from its own /metrics over its runs.
- ``--background-load``: a busy process pinned on one core for the whole run (the "loaded" condition, as
  when other pods share the node); the section name then says so.
- ``--profile``: py-spy (``pip install py-spy``) samples the Versus server process, every thread, over one
  extra Versus run at 32 clients; the functions holding most samples, on their own and with their callees,
  go into the section (where the time goes when a range crosses 1.0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import oip_request, run_clients  # noqa: E402
from bench.report import git_rev, machine, reexec_with, write_section  # noqa: E402
from bench.vit import sample_png  # noqa: E402
from bench.vit_backends import THREADS, versus_args  # noqa: E402
from versus_cli.launch import SERVICE_ENV  # noqa: E402

CONCURRENCY = (1, 8, 32)
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Run:
    rps: float
    p50_ms: float
    client_cpu: float
    stages: dict[str, float]  # Versus only: per-stage means from /metrics over this run


def scrape(port: int) -> dict[str, float]:
    """Sums per metric sample name (labels summed) of the Versus ViT metrics this bench reads."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("grpc_server_handling_seconds") and s.labels.get("grpc_method") != "ModelInfer":
                continue
            if s.name.endswith(("_sum", "_count")) or s.name == "versus_items_processed_total":
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def stages(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Versus: mean ms per request / per image / per batch between two scrapes of its /metrics."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    per = lambda name: 1e3 * d[f"{name}_sum"] / max(1.0, d[f"{name}_count"])  # noqa: E731
    request, queue = per("grpc_server_handling_seconds"), per("versus_queue_seconds")
    return {"request_ms": request, "queue_ms": queue, "batch_ms": request - queue,
            "compute_ms_per_image": 1e3 * d["versus_compute_seconds_sum"] / max(1.0, d["versus_items_processed_total"]),
            "mean_batch": d["versus_batch_size_sum"] / max(1.0, d["versus_batch_size_count"])}


def triton_stats(url: str) -> dict[str, float]:
    """Triton's own counters for model ``vit`` (statistics extension): cumulative ns and counts."""
    import tritonclient.grpc as tc

    with tc.InferenceServerClient(url) as client:
        s = client.get_inference_statistics("vit", as_json=True)["model_stats"][0]
    i = s["inference_stats"]
    return {"success_ns": float(i["success"].get("ns", 0)), "success": float(i["success"].get("count", 0)),
            "queue_ns": float(i["queue"].get("ns", 0)), "compute_ns": float(i["compute_infer"].get("ns", 0)),
            "executions": float(s.get("execution_count", 0)), "inferences": float(s.get("inference_count", 0))}


def triton_stages(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The peer's figures in the same units as :func:`stages`."""
    d = {k: after[k] - before[k] for k in after}
    # Triton adds a batch's compute time to every request in it: per request, that is the run it waited on.
    return {"request_ms": d["success_ns"] / 1e6 / max(1.0, d["success"]),
            "queue_ms": d["queue_ns"] / 1e6 / max(1.0, d["success"]),
            "batch_ms": d["compute_ns"] / 1e6 / max(1.0, d["inferences"]),
            "mean_batch": d["inferences"] / max(1.0, d["executions"])}


def payloads(export_dir: Path, n: int = 8) -> tuple[list[bytes], list[bytes]]:
    """(peer requests, Versus requests): the same preprocessed images, each server's input name."""
    import io

    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(export_dir)
    images = [Image.open(io.BytesIO(sample_png(i))).convert("RGB") for i in range(n)]
    pixels = [processor(images=im, return_tensors="np")["pixel_values"].astype(np.float32) for im in images]
    peer = [oip_request("vit", {"pixel_values": ("FP32", p)}, ("logits",)) for p in pixels]
    versus = [oip_request("vit-tensor", {"PIXELS": ("FP32", p)}, ("PROBABILITIES",)) for p in pixels]
    return peer, versus


def drive(target: str, reqs: list[bytes], requests: int, clients: int, metrics_port: int = 0) -> Run:
    """One run; Versus when ``metrics_port`` is given (its /metrics), else the Triton peer (its statistics)."""
    before = scrape(metrics_port) if metrics_port else triton_stats(target)
    result = run_clients(target, MODEL_INFER, reqs, requests, clients, warmup=min(clients, 4))
    spent = stages(before, scrape(metrics_port)) if metrics_port else triton_stages(before, triton_stats(target))
    return Run(result.rps, result.p50_ms, result.cpu_share, spent)


def _spin(stop) -> None:  # the background load: one core kept busy until told to stop
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x ^= i


class BackgroundLoad:
    """One busy process for the length of a ``with`` block (``enabled=False``: nothing)."""

    def __init__(self, enabled: bool) -> None:
        import multiprocessing

        self.enabled = enabled
        self._stop = multiprocessing.Event()
        self._proc = multiprocessing.Process(target=_spin, args=(self._stop,), daemon=True) if enabled else None

    def __enter__(self) -> BackgroundLoad:
        if self._proc is not None:
            self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._stop.set()
            self._proc.join(10)


def profile_versus(pid: int, target: str, reqs: list[bytes], requests: int, clients: int) -> list[str]:
    """py-spy over one Versus run: the top frames by own samples and by inclusive samples, as table rows."""
    import collections
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        rec = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                                "--output", str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached before the load starts
        run_clients(target, MODEL_INFER, reqs, requests, clients, warmup=0)
        rec.send_signal(2)  # SIGINT: py-spy writes what it sampled
        rec.wait(60)
        lines = out.read_text().splitlines() if out.exists() else []
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] for f in stack.split(";") if f]
        total += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames[1:]):  # the thread's name is the first entry
            inclusive[frame] += n
    if not total:
        return ["| (py-spy recorded nothing: is it installed, and may this user ptrace?) | | |"]
    return [f"| `{name}` | {own[name] / total:.0%} | {inclusive[name] / total:.0%} |"
            for name, _ in own.most_common(12)]


def measure(export_dir: Path, rounds: int, requests: dict[int, int],
            profile: bool = False) -> tuple[dict[tuple[str, int], list[Run]], list[str]]:
    from services.vit.triton_repo import RepoOptions, write_repository
    from versus_cli.export import LocalTriton
    from versus_cli.launch import ServiceProcess

    peer_reqs, versus_reqs = payloads(export_dir)
    runs: dict[tuple[str, int], list[Run]] = {(s, c): [] for s in ("versus", "triton") for c in CONCURRENCY}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_repository(export_dir, repo, RepoOptions(platform="python", device="cpu", max_batch_size=32,
                                                       max_queue_delay_us=0, threads=THREADS))
        with LocalTriton(repo) as triton, \
                ServiceProcess("vit", versus_args(export_dir, "onnx", "auto"), log_path=Path(tmp) / "vit.log") as svc:
            triton.wait_ready(300, ("vit",))
            for r in range(rounds):
                for clients in CONCURRENCY:
                    order = ("versus", "triton") if r % 2 == 0 else ("triton", "versus")
                    for server in order:
                        if server == "versus":
                            run = drive(svc.target, versus_reqs, requests[clients], clients, svc.metrics_port)
                        else:
                            run = drive(triton.url, peer_reqs, requests[clients], clients)
                        runs[server, clients].append(run)
                        print(f"round {r + 1} {server} x{clients}: {run.rps:.2f} req/s p50 {run.p50_ms:.0f} ms",
                              flush=True)
            profile_rows = profile_versus(svc.proc.pid, svc.target, versus_reqs, requests[32], 32) if profile else []
    return runs, profile_rows


def med(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def write_report(command: str, runs: dict[tuple[str, int], list[Run]], rounds: int, requests: dict[int, int],
                 seconds: float, loadavg: tuple[float, float], loaded: bool, profile_rows: list[str]) -> None:
    rows, stage_rows, short = [], [], []
    for c in CONCURRENCY:
        v, t = runs["versus", c], runs["triton", c]
        ratios = [a.rps / b.rps for a, b in zip(v, t, strict=True)]
        if statistics.median(ratios) < 1.0:
            short.append(f"{c} clients ({statistics.median(ratios):.2f})")
        rows.append(f"| {c} | {med(v, 'rps'):.2f} | {med(t, 'rps'):.2f} | {statistics.median(ratios):.2f} "
                    f"({min(ratios):.2f}–{max(ratios):.2f}) | {med(v, 'p50_ms'):.0f} | {med(t, 'p50_ms'):.0f} | "
                    f"{med(v + t, 'client_cpu'):.1%} |")
        for name, server_runs in (("Versus", v), ("Triton", t)):
            s = {k: statistics.median(r.stages[k] for r in server_runs) for k in server_runs[0].stages}
            per_image = f"{s['compute_ms_per_image']:.0f}" if "compute_ms_per_image" in s else "—"
            stage_rows.append(f"| {c} | {name} | {s['request_ms']:.0f} | {s['queue_ms']:.0f} | {s['batch_ms']:.0f} | "
                              f"{s['mean_batch']:.1f} | {per_image} |")
    condition = "with a busy process on one core" if loaded else "no load added"
    lines = [
        f"## Versus ÷ Triton over the Open Inference Protocol (ViT-B/16 fp32 ONNX, CPU, {condition})",
        "",
        f"Command: `{command}` (commit {git_rev()}, {time.strftime('%Y-%m-%d')}, "
        f"{seconds / 60:.1f} min). "
        f"Machine: {machine()}; shared with other work (1-minute load average {loadavg[0]:.1f} at the start, "
        f"{loadavg[1]:.1f} at the end), so the figures are medians over {rounds} round(s) in which the two servers "
        "alternate (order flipped every round), and the ratios are per round.",
        "",
        "Peer: the bundled tritonserver 2.51 running vit-base-random's fp32 `model.onnx` under ONNX Runtime in its "
        f"Python backend (`versus triton export --platform python --device cpu`), dynamic batching ≤ 32, {THREADS} "
        f"ORT threads. Versus: `versus serve vit --backend onnx` on the same file, {THREADS} ORT threads, batches "
        "≤ 32, model `vit-tensor`. One client for both — `bench/loadgen.py`, asyncio on one thread in its own "
        "process — sends ModelInfer with one preprocessed 224² image (FP32 [1, 3, 224, 224], raw contents) and "
        f"asks for one FP32 [1, 1000] output; requests per run: {requests}.",
        "",
        "| clients | Versus req/s | Triton req/s | Versus ÷ Triton (range over rounds) | Versus p50 ms | "
        "Triton p50 ms | load generator CPU (one core) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Where the time goes, from each server's own counters over its runs (Versus: /metrics; Triton: its "
        "statistics extension), medians over rounds, per request: request = time in the server, queue = wait for "
        "a batch, batch run = the ONNX Runtime run of the request's batch (Triton: its compute counter; Versus: "
        "request − queue, so it also holds the ~1 ms of tensor conversion), and Versus' compute per image "
        "(all compute ÷ images), whose inverse is its compute-bound ceiling in img/s.",
        "",
        "| clients | server | request ms | queue ms | batch run ms | mean batch | compute ms / image |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *stage_rows,
        "",
        "Goal: Versus ≥ 1.0× the peer at every concurrency. "
        + (f"Short of it, in the median: {', '.join(short)}; the ranges over rounds and the breakdown above show "
           "how much of the gap is the machine and where each server's time goes." if short
           else "Met at every concurrency (medians over rounds; see the ranges)."),
    ]
    if profile_rows:
        lines += ["", "Where Versus' time goes at 32 clients: py-spy samples of the server process (every thread, "
                  "busy samples only) over one extra run; share of samples in the function itself and with its "
                  "callees.",
                  "", "| function | own | with callees |", "|---|---:|---:|", *profile_rows]
    write_section("vit-oip-loaded" if loaded else "vit-oip", "\n".join(lines))
    print("\n".join(lines))


def fp32_export(models: Path) -> Path:
    """vit-base-random's fp32 ONNX export directory, built (and exported) when missing."""
    from services.vit.builders import BUILDERS
    from services.vit.onnx_export import export_onnx

    base, export = models / "vit-base-random", models / "vit-base-random-onnx"
    if not (base / "model.safetensors").exists():
        BUILDERS["vit-base-random"](base)
    if not (export / "model.onnx").exists():
        export_onnx(base, export, quantize_to="none", log_fn=print)
    return export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=str(ROOT / ".models"))
    parser.add_argument("--quick", action="store_true", help="one round, fewer requests (smoke run)")
    parser.add_argument("--rounds", type=int, default=0, help="alternated rounds (default 5; --quick: 1)")
    parser.add_argument("--background-load", action="store_true", help="keep one core busy during the run")
    parser.add_argument("--profile", action="store_true", help="py-spy the Versus server over one extra run")
    args = parser.parse_args()
    reexec_with(SERVICE_ENV)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    export = fp32_export(Path(args.models_dir))
    rounds = args.rounds or (1 if args.quick else 5)
    requests = {1: 6, 8: 16, 32: 48} if args.quick else {1: 12, 8: 32, 32: 64}
    with BackgroundLoad(args.background_load):
        runs, profile_rows = measure(export, rounds, requests, profile=args.profile)
    command = "python bench/vit_oip.py " + " ".join(sys.argv[1:])
    write_report(command.strip(), runs, rounds, requests, time.perf_counter() - started,
                 (load_before, os.getloadavg()[0]), args.background_load, profile_rows)


if __name__ == "__main__":
    main()
