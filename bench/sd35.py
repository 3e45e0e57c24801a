"""SD3.5 service overhead on CPU: the tiny Large pipeline at 128x128 and 28 steps, raw
``pipeline(...)`` vs the same request through the service, interleaved in one run → docs/BENCHMARKS.md.

    python bench/sd35.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import git_rev, machine, reexec_with, write_section  # noqa: E402
from versus_cli.launch import SERVICE_ENV  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--models-dir", default=str(ROOT / ".models"))
    args = parser.parse_args()
    reexec_with(SERVICE_ENV)
    import torch
    from diffusers import StableDiffusion3Pipeline

    from bench.sd35_common import Case, ProcessHarness, interleaved
    from versus_cli.models import build_model

    torch.set_num_threads(2)
    model = Path(args.models_dir) / "sd35-large-tiny"
    if not (model / "model_index.json").exists():
        build_model("sd35-large-tiny", model)
    pipe = StableDiffusion3Pipeline.from_pretrained(model, use_safetensors=True, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    harness = ProcessHarness(["--model", f"large={model}"], ["--default-size", "128", "--torch-threads", "2",
                                                            "--log-level", "WARNING", "--drain-delay-s", "0"])
    case = Case("large-tiny 128x128, 28 steps, cfg 3.5", "large", 128, 28, 3.5)
    row = interleaved(pipe, harness, case, torch.device("cpu"), args.repeats)
    harness.close()
    t = row["timings_ms"]
    lines = [
        "## SD3.5 service vs raw pipeline (CPU, tiny Large)",
        "",
        f"Command: `python bench/sd35.py --repeats {args.repeats}` (commit {git_rev()}). Machine: {machine()}.",
        "Same request (seed, size, steps, guidance) as a raw `StableDiffusion3Pipeline(...)` call returning PIL images "
        "and through the service (`versus serve sd35` in its own process, as clients meet it; gRPC stream with "
        "Progress events coalesced to at most one per 50 ms, PNG encoding), alternated; medians, and "
        "the ratio is the median of the per-pair ratios (robust to drift). The machine is shared with other "
        "work and noisy: the same script has drifted by ±25% within minutes, so ratios a few percent apart are "
        "within the noise.",
        "",
        "| case | raw s (median) | service s (median) | service / raw (median of pairs) |",
        "|---|---:|---:|---:|",
        f"| {row['case']} | {row['raw_s']:.3f} | {row['service_s']:.3f} | {row['ratio']:.3f} (target ≤ 1.03) |",
        "",
        f"Service-side breakdown of the last run: text encoding {t['text_encoding']:.1f} ms, denoising "
        f"{t['denoising']:.1f} ms, VAE decode {t['decode']:.1f} ms, PNG encode {t['encode']:.1f} ms.",
    ]
    write_section("sd35", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
