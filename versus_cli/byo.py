"""Bring-your-own-model helpers for the demo and the tests: the digits held-out set as an eval-set folder,
and a Triton model repository holding the project's digits networks (ONNX inside the bundled
tritonserver's Python backend)."""

from __future__ import annotations

from pathlib import Path


def write_digits_eval_set(out: Path) -> Path:
    """The held-out digits (index % 5 == 0, never trained on) as ``out/<digit>/<index>.png``."""
    from services.vit.builders import digits_splits

    held = digits_splits()[1]
    for k, (image, label) in enumerate(zip(held.images, held.labels, strict=True)):
        path = out / str(int(label)) / f"{k:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return out


def write_digits_repository(models: dict[str, Path], repo: Path, work: Path) -> Path:
    """Export each ``name → vit model directory`` to ONNX and write them as models of one Triton repository
    (python platform, CPU: what the bundled tritonserver runs)."""
    from services.vit.onnx_export import export_onnx
    from services.vit.triton_repo import RepoOptions, write_repository

    for name, model_dir in models.items():
        export = work / f"{name}-onnx"
        if not (export / "model.onnx").exists():
            export_onnx(model_dir, export)
        write_repository(export, repo, RepoOptions(name=name, platform="python", device="cpu", max_batch_size=8,
                                                   max_queue_delay_us=500, threads=1))
    return repo
