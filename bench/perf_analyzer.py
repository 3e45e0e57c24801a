"""Versus ÷ Triton measured by Triton's own ``perf_analyzer``, same fp32 ONNX ViT → docs/BENCHMARKS.md
(section ``perf-analyzer``).

    python bench/perf_analyzer.py [--chroot DIR] [--rounds 3] [--concurrency-range 1:8:7]
                                  [--request-count 8] [--quick]

- perf_analyzer's wheels (``perf-analyzer`` on PyPI) need glibc ≥ 2.38; the project's Debian 12 has
  2.36. So it runs from a Debian 13 (trixie) chroot: made once with ``mmdebstrap --variant=minbase``
  into ``--chroot`` (default ``.cache/perf-analyzer-chroot``, ignored by git) and reused after. The
  wheel is downloaded by the host's pip (its index and CA settings) and installed in a venv inside the
  chroot with ``--no-index --find-links``: pip inside the chroot cannot verify the host's re-signed
  HTTPS. Needs root (mmdebstrap, chroot). The chroot shares the host's network, so perf_analyzer
  reaches both servers on 127.0.0.1.
- Servers: ``versus serve vit --backend onnx`` on vit-base-random's fp32 ``model.onnx`` (model
  ``vit-tensor``, ``PIXELS`` FP32 [-1, 3, 224, 224]) and the bundled tritonserver running the same file
  in its Python backend (model ``vit``, ``pixel_values``), both as ``bench/vit_oip.py`` sets them up.
  perf_analyzer asks for every output a model's config lists, so the peer's config here lists only
  ``logits`` [1000] (not the hidden states): one small output each, as in ``bench/vit_oip.py``.
- Per round, one perf_analyzer run per server (gRPC, batch 1, one preprocessed sample image as input
  data JSON, the concurrency range),
  the two servers alternating (order flipped every round); medians and per-round ratios.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import git_rev, machine, reexec_with, write_section  # noqa: E402
from bench.vit_backends import THREADS, versus_args  # noqa: E402
from bench.vit_oip import fp32_export  # noqa: E402
from versus_cli.launch import SERVICE_ENV  # noqa: E402

VERSION = "2.60.0"
SUITE = "trixie"
VENV = "/opt/perf-analyzer"
#: The wheel's own binary (its ``bin/perf_analyzer`` entry point drops the exit status).
BINARY = f"{VENV}/perf_analyzer"
#: The chroot's commands see only this environment (not the host's PIP_* and CA variables).
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
              "LANG": "C.UTF-8"}
#: How each server names the same preprocessed-pixels model, and its input.
TARGETS = {"versus": "vit-tensor", "triton": "vit"}
INPUTS = {"versus": "PIXELS", "triton": "pixel_values"}


@dataclass(frozen=True)
class Point:
    """One concurrency level of one perf_analyzer run (its CSV row; latencies in ms)."""

    concurrency: int
    infer_per_s: float
    p50_ms: float
    p99_ms: float
    server_queue_ms: float
    server_infer_ms: float


def parse_csv(text: str) -> list[Point]:
    """perf_analyzer's ``-f`` CSV (microseconds) → points sorted by concurrency."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "Inferences/Second" not in rows[0]:
        raise ValueError(f"not a perf_analyzer CSV: {text[:200]!r}")
    ms = lambda row, key: float(row.get(key) or 0) / 1e3  # noqa: E731
    return sorted((Point(int(r["Concurrency"]), float(r["Inferences/Second"]), ms(r, "p50 latency"),
                         ms(r, "p99 latency"), ms(r, "Server Queue"), ms(r, "Server Compute Infer"))
                   for r in rows), key=lambda p: p.concurrency)


def chroot_cmd(chroot: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(chroot), *args], env=CHROOT_ENV,
                          capture_output=True, text=True,
                          check=check, timeout=timeout)


def ensure_chroot(chroot: Path) -> str:
    """Make (or reuse) the Debian 13 chroot with perf_analyzer; returns its version line."""
    if not os.path.lexists(chroot / BINARY.lstrip("/")):  # an absolute link, resolved inside the chroot
        if os.geteuid() != 0 or not shutil.which("mmdebstrap"):
            sys.exit("making the perf_analyzer chroot needs root and mmdebstrap (apt-get install mmdebstrap)")
        if chroot.exists() and any(chroot.iterdir()):
            sys.exit(f"{chroot} exists but has no {BINARY}: remove it, or pass another --chroot")
        chroot.parent.mkdir(parents=True, exist_ok=True)
        print(f"making a Debian {SUITE} chroot in {chroot} (a few minutes)", flush=True)
        subprocess.run(["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                        SUITE, str(chroot)], check=True)
        wheels = chroot / "tmp" / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", f"perf-analyzer=={VERSION}", "--no-deps",
                        "--only-binary=:all:", "--platform", "manylinux_2_38_x86_64", "-d", str(wheels)], check=True)
        chroot_cmd(chroot, "python3", "-m", "venv", VENV)
        chroot_cmd(chroot, f"{VENV}/bin/pip", "install", "--no-index", "--find-links", "/tmp/wheels",
                   f"perf-analyzer=={VERSION}")
        shutil.rmtree(wheels)
        chroot_cmd(chroot, "sh", "-c", f"ln -s {VENV}/lib/python3*/site-packages/perf_analyzer/bin/perf_analyzer "
                   + BINARY)
    done = chroot_cmd(chroot, BINARY, "--version", check=False, timeout=60)
    lines = (done.stdout + done.stderr).strip().splitlines()
    build = re.search(r"\(commit ([0-9a-f]+)\)", lines[-1] if lines else "")
    # "build", not "commit": the docs' checks read "commit <hash>" as a commit of this repository.
    return f"perf-analyzer {VERSION}, build {build.group(1)}" if build else f"perf-analyzer {VERSION}"


def input_data(export_dir: Path, chroot: Path) -> dict[str, str]:
    """One preprocessed sample image (as ``bench/vit_oip.py`` sends) as perf_analyzer input-data JSON, one
    file per server's input name, inside the chroot; returns the paths as the chroot sees them. (Its
    ``random`` data are random FP32 bit patterns, NaN included, which Versus rejects.)"""
    import base64
    import json

    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    from bench.vit import sample_png

    image = Image.open(io.BytesIO(sample_png(0))).convert("RGB")
    pixels = AutoImageProcessor.from_pretrained(export_dir)(images=image, return_tensors="np")["pixel_values"]
    pixels = np.ascontiguousarray(pixels[0], dtype=np.float32)
    paths = {}
    for server, name in INPUTS.items():
        path = f"/tmp/perf-analyzer-{server}-{os.getpid()}.json"
        data = {"data": [{name: {"b64": base64.b64encode(pixels.tobytes()).decode(), "shape": list(pixels.shape)}}]}
        (chroot / path.lstrip("/")).write_text(json.dumps(data))
        paths[server] = path
    return paths


def perf_analyzer(chroot: Path, model: str, url: str, data: str, concurrency: str, request_count: int) -> list[Point]:
    """One perf_analyzer run over gRPC; its CSV is written inside the chroot and read back."""
    out = f"/tmp/perf-analyzer-{os.getpid()}.csv"
    (chroot / out.lstrip("/")).unlink(missing_ok=True)
    done = chroot_cmd(chroot, BINARY, "-m", model, "-u", url, "-i", "grpc", "-b", "1", "--input-data", data,
                      "--concurrency-range", concurrency, "--measurement-mode", "count_windows",
                      "--measurement-request-count", str(request_count),
                      "--stability-percentage", "999", "--max-trials", "10", "-f", out, check=False)
    path = chroot / out.lstrip("/")
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"perf_analyzer -m {model} exited {done.returncode}:\n{(done.stdout + done.stderr)[-1500:]}")
    points = parse_csv(path.read_text())
    path.unlink()
    return points


def peer_repository(export_dir: Path, repo: Path) -> None:
    """The peer's repository as ``bench/vit_oip.py`` writes it, its config listing ``logits`` only."""
    from services.vit.triton_repo import RepoOptions, write_repository

    model_dir = write_repository(export_dir, repo, RepoOptions(platform="python", device="cpu", max_batch_size=32,
                                                               max_queue_delay_us=0, threads=THREADS))
    config = model_dir / "config.pbtxt"
    lines = config.read_text().splitlines()
    kept = [ln for ln in lines if '"last_hidden_state"' not in ln and '"hidden_states"' not in ln]
    if len(kept) != len(lines) - 2:
        raise RuntimeError(f"unexpected peer config layout:\n{config.read_text()}")
    config.write_text(re.sub(r",\n\]", "\n]", "\n".join(kept)) + "\n")


def measure(chroot: Path, export_dir: Path, rounds: int, concurrency: str,
            request_count: int) -> dict[str, list[list[Point]]]:
    from versus_cli.export import LocalTriton
    from versus_cli.launch import ServiceProcess

    runs: dict[str, list[list[Point]]] = {"versus": [], "triton": []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        peer_repository(export_dir, repo)
        data = input_data(export_dir, chroot)
        with LocalTriton(repo) as triton, \
                ServiceProcess("vit", versus_args(export_dir, "onnx", "auto"), log_path=Path(tmp) / "vit.log") as svc:
            triton.wait_ready(300, ("vit",))
            urls = {"versus": svc.target, "triton": triton.url}
            for r in range(rounds):
                for server in ("versus", "triton") if r % 2 == 0 else ("triton", "versus"):
                    points = perf_analyzer(chroot, TARGETS[server], urls[server], data[server], concurrency,
                                           request_count)
                    runs[server].append(points)
                    print(f"round {r + 1} {server}: "
                          + ", ".join(f"x{p.concurrency} {p.infer_per_s:.1f}/s p50 {p.p50_ms:.0f} ms" for p in points),
                          flush=True)
    return runs


def write_report(command: str, version: str, runs: dict[str, list[list[Point]]], concurrency: str, request_count: int,
                 seconds: float, loadavg: tuple[float, float]) -> None:
    levels = [p.concurrency for p in runs["versus"][0]]
    med = lambda server, i, attr: statistics.median(getattr(run[i], attr) for run in runs[server])  # noqa: E731
    rows = []
    for i, c in enumerate(levels):
        ratios = [v[i].infer_per_s / t[i].infer_per_s for v, t in zip(runs["versus"], runs["triton"], strict=True)]
        rows.append(f"| {c} | {med('versus', i, 'infer_per_s'):.1f} | {med('triton', i, 'infer_per_s'):.1f} | "
                    f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | "
                    f"{med('versus', i, 'p50_ms'):.0f} / {med('triton', i, 'p50_ms'):.0f} | "
                    f"{med('versus', i, 'p99_ms'):.0f} / {med('triton', i, 'p99_ms'):.0f} | "
                    f"{med('versus', i, 'server_queue_ms'):.1f} / {med('triton', i, 'server_queue_ms'):.1f} | "
                    f"{med('versus', i, 'server_infer_ms'):.0f} / {med('triton', i, 'server_infer_ms'):.0f} |")
    rounds = len(runs["versus"])
    lines = [
        "## Versus ÷ Triton measured by perf_analyzer (ViT-B/16 fp32 ONNX, CPU, gRPC)",
        "",
        f"Command: `{command}` (commit {git_rev()}, {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min). "
        f"Machine: {machine()}; shared with other work while it ran (1-minute load average {loadavg[0]:.1f} at "
        f"the start, {loadavg[1]:.1f} at the end), so the figures are medians over {rounds} round(s) in which the "
        "two servers alternate (order flipped every round), and the ratios are per round.",
        "",
        f"Client: Triton's `perf_analyzer` ({version}) from a Debian 13 chroot (its wheels need glibc ≥ 2.38), "
        "`-i grpc -b 1 --input-data FILE` (one preprocessed sample image, the pixels `bench/vit_oip.py` sends) "
        f"`--concurrency-range {concurrency} --measurement-mode count_windows --measurement-request-count "
        f"{request_count} --stability-percentage 999 --max-trials 10` (windows of requests, not of time: on the "
        "loaded machine a batch of 8 can outlast a time window; the stability check is in effect off, as 3 "
        "windows rarely agreed even within 100 % here, so each figure is perf_analyzer's mean over its first 3 "
        "windows, and the rounds are what shows the spread). "
        "Versus: `versus serve vit --backend onnx`, "
        f"model `vit-tensor` (`PIXELS` FP32 [1, 3, 224, 224] → `PROBABILITIES` [1, 1000] and `LABELS`), {THREADS} "
        "ORT threads, batches ≤ 32. Peer: the bundled tritonserver 2.51 running the same vit-base-random "
        f"`model.onnx` in its Python backend, model `vit` (`pixel_values` → `logits` [1, 1000]; the config "
        f"lists only that output, since perf_analyzer asks for every listed one), {THREADS} ORT threads, dynamic "
        "batching ≤ 32, no queue delay. The server columns are perf_analyzer's, from each server's "
        "statistics extension (`ModelStatistics`), per request.",
        "",
        "| concurrency | Versus infer/s | Triton infer/s | Versus ÷ Triton (range over rounds) | p50 ms V / T | "
        "p99 ms V / T | server queue ms V / T | server compute ms V / T |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Not measured: Versus' `vit` model (encoded images, `IMAGE` BYTES [-1], one string per image). "
        "perf_analyzer needs a non-empty per-item shape: with none it stops at \"unable to set shape for the "
        "input\", and a shape of [1] (`--shape IMAGE:1` or in the input-data JSON) is refused as \"incompatible "
        "with the model's input shape of []\". See docs/OIP.md#perf_analyzer.",
    ]
    write_section("perf-analyzer", "\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=os.environ.get("VERSUS_MODELS_DIR", str(ROOT / ".models")))
    parser.add_argument("--chroot", default=str(ROOT / ".cache" / "perf-analyzer-chroot"),
                        help="the Debian 13 chroot with perf_analyzer (made when missing)")
    parser.add_argument("--rounds", type=int, default=0, help="alternated rounds (default 3; --quick: 1)")
    parser.add_argument("--concurrency-range", default="1:8:7", help="perf_analyzer's start:end:step")
    parser.add_argument("--request-count", type=int, default=0,
                        help="requests per measurement window (default 8; --quick: 4)")
    parser.add_argument("--quick", action="store_true", help="one round, short windows (smoke run)")
    args = parser.parse_args()
    reexec_with(SERVICE_ENV)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    version = ensure_chroot(Path(args.chroot))
    export = fp32_export(Path(args.models_dir))
    rounds = args.rounds or (1 if args.quick else 3)
    count = args.request_count or (4 if args.quick else 8)
    runs = measure(Path(args.chroot), export, rounds, args.concurrency_range, count)
    command = "python bench/perf_analyzer.py " + " ".join(sys.argv[1:])
    write_report(command.strip(), version, runs, args.concurrency_range, count, time.perf_counter() - started,
                 (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
