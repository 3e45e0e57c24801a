"""``versus demo`` (``make demo``): the product's main job, end to end, on embedded defaults.

Builds the models it needs (cached), starts vit, sd35, ranker and gateway as separate processes,
waits for their health, runs "vit-base-patch16-224 vs stable-diffusion-3.5-large" through the
gateway with live probes and the head-to-head of the SD3.5 variants (progress on stderr), prints the
feature table and verdict, writes ``comparison.md`` and ``comparison.html``, and drains every service.

The ViT service serves the exact vit-base-patch16-224 architecture with random weights (so the
structural probes check the real shape: 1000 labels, 768-d, 13 layers) and the SD3.5 service the three
tiny pipelines; point these variables at real weight folders to use them instead:
``VERSUS_DEMO_VIT_MODEL``, ``VERSUS_DEMO_SD35_LARGE``, ``VERSUS_DEMO_SD35_LARGE_TURBO``,
``VERSUS_DEMO_SD35_MEDIUM``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from versus_cli.launch import ServiceProcess

PAIR = ("vit-base-patch16-224", "stable-diffusion-3.5-large")
#: model → (built by default, environment variable naming real weights)
MODELS = {
    "vit": ("vit-base-random", "VERSUS_DEMO_VIT_MODEL"),
    "large": ("sd35-large-tiny", "VERSUS_DEMO_SD35_LARGE"),
    "large-turbo": ("sd35-large-turbo-tiny", "VERSUS_DEMO_SD35_LARGE_TURBO"),
    "medium": ("sd35-medium-tiny", "VERSUS_DEMO_SD35_MEDIUM"),
}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _model(key: str, models_dir: Path) -> Path:
    from versus_cli.models import build_model

    name, env = MODELS[key]
    if os.environ.get(env):
        return Path(os.environ[env])
    out = models_dir / name
    if not (out / "model.safetensors").exists() and not (out / "model_index.json").exists():
        _say(f"building {name} into {out} ...")
        started = time.perf_counter()
        build_model(name, out)
        _say(f"built {name} in {time.perf_counter() - started:.0f}s")
    return out


def _adapters(models_dir: Path, large: Path) -> Path:
    """An adapter root with the example LoRA for the Large pipeline (the LoRA probe loads it)."""
    from versus_cli.models import build_model

    root = models_dir / "demo-adapters"
    target = root / "loras" / "example.safetensors"
    if not target.exists():
        _say("building sd35-lora-example ...")
        built = build_model("sd35-lora-example", root / "loras", base=large)
        source = built if built.is_file() else root / "loras" / "pytorch_lora_weights.safetensors"
        source.rename(target)
    return root


def run_demo(models_dir: Path, out_dir: Path, json_out: str = "") -> int:
    from versus.gateway.v1 import gateway_pb2

    from services.common.client import ClientSettings
    from versus_cli.compare import print_summary, run_compare, write_reports

    started = time.perf_counter()
    models_dir.mkdir(parents=True, exist_ok=True)
    vit = _model("vit", models_dir)
    sd35 = {v: _model(v, models_dir) for v in ("large", "large-turbo", "medium")}
    adapters = _adapters(models_dir, sd35["large"])
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    common = ["--torch-threads", "1", "--drain-delay-s", "0"]
    vit_args = ["--model", str(vit), "--model-id", "google/vit-base-patch16-224", *common]
    services = {
        # one ViT deployment (precision auto); the precision probe needs an fp32 and an int8 deployment
        # (GATEWAY_VIT_PRECISIONS), which the demo leaves out to stay within a minute on 2 cores
        "vit": ServiceProcess("vit", vit_args, log_path=logs / "vit.log"),
        "sd35": ServiceProcess("sd35", [*(a for v, p in sd35.items() for a in ("--model", f"{v}={p}")),
                                        "--adapter-root", str(adapters), "--default-size", "128", *common],
                               log_path=logs / "sd35.log"),
        "ranker": ServiceProcess("ranker", ["--db", f"sqlite:///{out_dir / 'ranker.db'}", "--drain-delay-s",
                                            "0"], log_path=logs / "ranker.log"),
    }
    codes: dict[str, int] = {}
    comparison = None
    try:
        for svc in services.values():  # all load at the same time
            svc.launch()
        for name, svc in services.items():
            svc.wait_ready(timeout_s=600)
            _say(f"{name} SERVING on {svc.target} (metrics :{svc.metrics_port})")
        services["gateway"] = ServiceProcess("gateway", [
            "--vit", services["vit"].target, "--sd35", services["sd35"].target, "--ranker", services["ranker"].target,
            "--lora-probe-path", "loras/example.safetensors", "--imagenet-classes", "tench,goldfish,volcano",
            "--probe-size", "128",  # the catalog's 1024 px, at the default steps, takes minutes on 2 cores
            "--weights-root", str(models_dir.resolve()),  # the gateway hashes the built models itself
            # the ViT-B observations (continuity, stripes transfer) take a few hundred forward passes on the CPU
            "--compare-budget-s", "420",
            "--http-port", "-1", "--drain-delay-s", "0"], log_path=logs / "gateway.log")
        services["gateway"].start(timeout_s=120)
        _say(f"gateway SERVING on {services['gateway'].target}")
        settings = ClientSettings(services["gateway"].target)
        request = gateway_pb2.CompareRequest(model_ids=list(PAIR), probes=gateway_pb2.ProbeOptions(
            live=True, head_to_head=True, record_matches=True))
        _say(f"\n== {PAIR[0]} vs {PAIR[1]}: live probes, cross-model quality, head-to-head ==")
        comparison = run_compare(settings, request, timeout=900)
        files = write_reports(settings, comparison, out_dir, timeout=120)
        print_summary(comparison, files)
    finally:
        for name, svc in reversed(list(services.items())):
            if svc.started:
                codes[name] = svc.stop()
    _say(f"\nservices drained and exited with codes {codes}; demo took {time.perf_counter() - started:.0f}s")
    if json_out and comparison is not None:
        Path(json_out).write_text(json.dumps({
            "elapsed_s": round(time.perf_counter() - started, 1), "exit_codes": codes,
            "verdict": comparison.verdict, "probes_run": comparison.probes_run,
            "duels": len(comparison.duels), "files": [str(out_dir / "comparison.md"), str(out_dir / "comparison.html")],
            "marks": {m.entry.id: [gateway_pb2.EvidenceMark.Name(c.mark) for c in m.capabilities]
                      for m in comparison.models}}, indent=2))
    return 0 if comparison is not None and not any(codes.values()) else 1
