"""Record the known answers of a ViT checkpoint's files (``versus weights fingerprint PATH``, and the
project's builders at build time): the reference images through the checkpoint's own processor and the
same torch engine the vit service runs, on the CPU in fp32, recorded against the digest of the files'
bytes. See :mod:`services.common.known_answers`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from services.common import known_answers
from services.common.errors import ConfigError
from services.common.weights import combined_digest, weight_files


def fingerprint_vit(model_dir: Path, *, recorded_by: str = "versus weights fingerprint", write: bool = True,
                    torch_threads: int = 0) -> dict:
    """The known-answer record of the ViT checkpoint in ``model_dir`` (written beside it when ``write``)."""
    from services.vit.torch_engine import TorchEngine

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir} is not a model directory")
    files = weight_files(model_dir)
    if not files:
        raise ConfigError(f"{model_dir} holds no weight files (.safetensors)")
    engine = TorchEngine(str(model_dir), precision="fp32", device="cpu", torch_threads=torch_threads)
    engine.load()
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in known_answers.reference_images()]
    out = engine.forward(np.stack([engine.preprocess(img) for img in images]))
    doc = known_answers.record(out.logits.tolist(), combined_digest(files), backend="torch", precision="fp32",
                               device=engine.device_name, recorded_by=recorded_by)
    if write:
        known_answers.write(model_dir, doc)
    return doc
