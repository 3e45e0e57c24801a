"""SD3.5 on a GPU: real-size transformers with random bf16 weights (no downloads), raw vs service,
with and without torch.compile → JSON + Markdown (and docs/BENCHMARKS.md when run in the repo).

Builds the SD3.5 Large transformer (38 layers x 38 heads x 64, caption dim 2432, pos_embed_max_size 192,
RMS-norm QK) and the Medium one (24 layers, dual attention in layers 0-12, pos_embed_max_size 384), the
real 16-channel SD3 VAE, and shape-compatible 1-layer stand-ins for the three text encoders (CLIP-L
width 768, CLIP-G width 1280, T5 width 4096: text encoding is a small, once-per-request cost). Times
1024x1024 at 28 steps (Large, cfg 3.5), 4 steps (Turbo settings on the Large transformer, no CFG) and
40 steps (Medium, cfg 4.5, skip-layer guidance 7-9): a raw ``pipeline(...)`` call and the same request
through the SD3.5 service (in-process gRPC server, real channel), then the same with the transformer
under ``torch.compile``.

    python bench/gpu_sd35.py [--out DIR] [--budget-s 480] [--tiny]   # --tiny: a CPU dry run with tiny configs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_pipeline(transformer_cfg: dict, device, tiny: bool):
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from services.sd35 import builders

    dtype = torch.float32 if tiny else torch.bfloat16
    tok1, tok2, tok3 = builders.clip_tokenizer(), builders.clip_tokenizer(pad_token="!"), builders.t5_tokenizer()
    width1, width2, width3 = (32, 32, 64) if tiny else (768, 1280, 4096)

    def clip(width: int, seed: int):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok1), hidden_size=width, intermediate_size=width * 4, num_hidden_layers=2,
            num_attention_heads=max(1, width // 64), projection_dim=width, max_position_embeddings=77,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in bf16: no fp32 copy of 8B parameters
    try:
        with torch.device(device):
            torch.manual_seed(0)
            transformer = SD3Transformer2DModel(**transformer_cfg)
            vae = AutoencoderKL(**(builders._TINY_VAE if tiny else builders.SD3_VAE))
            t5 = T5EncoderModel(T5Config(vocab_size=len(tok3), d_model=width3, d_kv=64, d_ff=1024, num_layers=1,
                                         num_heads=width3 // 64, decoder_start_token_id=0, pad_token_id=0,
                                         eos_token_id=1))
            enc1, enc2 = clip(width1, 1), clip(width2, 2)
    finally:
        torch.set_default_dtype(previous)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=enc1, tokenizer=tok1, text_encoder_2=enc2, tokenizer_2=tok2,
                                    text_encoder_3=t5, tokenizer_3=tok3)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def main() -> None:  # noqa: C901 - a linear script with a time budget
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--budget-s", type=float, default=480, help="skip remaining phases past this")
    parser.add_argument("--tiny", action="store_true", help="tiny configs on CPU (dry run of the script)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", choices=("large", "medium"), default=None, help="one transformer family only")
    args = parser.parse_args()
    import torch

    from bench.sd35_common import Case, ServiceHarness, interleaved
    from services.sd35 import builders

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.tiny else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    size = 128 if args.tiny else 1024
    report: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "rows": [], "skipped": [], "notes": []}

    def save() -> None:
        (out / "gpu_sd35.json").write_text(json.dumps(report, indent=2))

    large_cfg = builders.TINY_VARIANTS["sd35-large-tiny"] if args.tiny else builders.LARGE_TRANSFORMER
    medium_cfg = builders.TINY_VARIANTS["sd35-medium-tiny"] if args.tiny else builders.MEDIUM_TRANSFORMER
    plans = [
        ("large", large_cfg, [Case("Large 28 steps cfg 3.5", "large", size, 28, 3.5),
                              Case("Large Turbo settings 4 steps cfg 0", "large-turbo", size, 4, 0.0)]),
        ("medium", medium_cfg, [Case("Medium 40 steps cfg 4.5 + SLG 7-9", "medium", max(size, 256), 40, 4.5,
                                     (7, 8, 9))]),
    ]
    plans = [p for p in plans if args.only in (None, p[0])]
    pipes = {}
    for family, cfg, _ in plans:  # both stay in GPU memory (~21 GiB in bf16), so eager runs come first
        t0 = time.perf_counter()
        pipes[family] = build_pipeline(cfg, device, args.tiny)
        params = sum(p.numel() for p in pipes[family].transformer.parameters())
        built_s = time.perf_counter() - t0
        report["notes"].append(f"{family}: transformer {params / 1e9:.2f}B parameters built in {built_s:.0f}s")
        save()
    for compiled in (False, True):
        for family, _, cases in plans:
            pipe = pipes[family]
            if time.perf_counter() - started > args.budget_s:
                report["skipped"].append(f"{family} compiled={compiled}: over the time budget")
                continue
            if compiled:
                pipe.transformer = torch.compile(pipe.transformer)
            t0 = time.perf_counter()
            harness = ServiceHarness({c.variant: pipe for c in cases}, cases[0].size, str(device))
            report["notes"].append(f"{family} compiled={compiled}: service start incl. warm-up at the served size "
                                   f"{time.perf_counter() - t0:.1f}s")
            for case in cases:
                if time.perf_counter() - started > args.budget_s:
                    report["skipped"].append(f"{case.name} compiled={compiled}: over the time budget")
                    continue
                row = interleaved(pipe, harness, case, device, args.repeats)
                row["compiled"] = compiled
                if device.type == "cuda":
                    row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                save()
            harness.close()
    report["total_s"] = time.perf_counter() - started
    save()
    lines = [f"| {r['case']} | {'yes' if r['compiled'] else 'no'} | {r['raw_s']:.2f} | {r['service_s']:.2f} | "
             f"{r['ratio']:.3f} | {r['timings_ms']['denoising']:.0f} / {r['timings_ms']['decode']:.0f} / "
             f"{r['timings_ms']['encode']:.0f} |" for r in report["rows"]]
    md = "\n".join([
        f"## SD3.5 on a GPU: real-size transformers, random bf16 weights ({report['device']})",
        "",
        "Command: `python bench/gpu_sd35.py` on a lent GPU machine (torch " + report["torch"] + "). Real-size "
        "transformers and VAE; 1-layer shape-compatible text encoders. 1024x1024, one warm-up then "
        f"{args.repeats} timed run(s) of each, raw `pipeline(...)` and service alternated.",
        "",
        "| case | torch.compile | raw s | service s | service / raw | service denoise / decode / PNG ms |",
        "|---|---|---:|---:|---:|---|",
        *lines,
        "",
        *[f"- {n}" for n in report["notes"]],
        *[f"- skipped: {s}" for s in report["skipped"]],
    ])
    (out / "gpu_sd35.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
