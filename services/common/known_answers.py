"""Known answers: fixed reference inputs, and the outputs a set of weights gives on them, recorded against
the weights' digest. No torch and no gRPC here (files, JSON and arithmetic only).

A digest says which files a store holds; known answers bind those files to what answers on the wire:
the gateway sends the reference images to the served model and compares its logits with the record
(:func:`compare`), within a tolerance stated per backend and precision (:data:`TOLERANCES`). Records
are written by the project's builders at build time and by ``versus weights fingerprint PATH`` for files
an operator hashed (nobody publishes reference outputs for the catalog's checkpoints); the file sits
beside the weights (:data:`KNOWN_ANSWERS_FILE`).

The reference images ship in ``services/common/reference_inputs/`` and are what :func:`make_reference_image`
draws from a fixed seed (a test checks that the shipped PNGs equal it).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

KNOWN_ANSWERS_FILE = "versus-known-answers.json"
REFERENCE_DIR = Path(__file__).parent / "reference_inputs"
REFERENCE_COUNT, REFERENCE_SIDE, REFERENCE_SEED = 4, 64, 20_261_204
FORMAT = 1
TOP_K = 5


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted ``|observed - recorded|`` per logit: ``atol + rtol * max|recorded|``; and whether the
    top-1 class must be the same on every image."""

    atol: float
    rtol: float
    same_top1: bool
    why: str


#: By (backend, precision) of the deployment *compared with* an fp32 torch record ("*": any backend: torch,
#: ONNX Runtime and Triton run the same graph). fp32 engines differ by reduction order only; half precisions
#: round activations to 8 (bf16) or 11 (fp16) mantissa bits; int8 (dynamic quantization) changes every
#: Linear. Measured: the same torch fp32 deployment reproduces its build's record exactly (0× the
#: tolerance); vit-tiny with every weight moved by 5% noise is 802× beyond the fp32 tolerance, top-1
#: changed on 4 of 4. The half-precision and int8 figures are stated, not yet measured against a record.
TOLERANCES = {
    ("*", "fp32"): Tolerance(1e-3, 1e-3, True, "fp32: reduction order only"),
    ("*", "fp16"): Tolerance(2e-2, 2e-2, False, "fp16: 11-bit mantissa activations"),
    ("*", "bf16"): Tolerance(5e-2, 5e-2, False, "bf16: 8-bit mantissa activations"),
    ("*", "int8"): Tolerance(1e-1, 2.5e-1, False, "int8: dynamically quantized Linear layers"),
}


def tolerance(backend: str, precision: str) -> Tolerance:
    """The tolerance for a deployment's backend and precision (strictest, fp32, when unknown)."""
    return TOLERANCES.get((backend, precision)) or TOLERANCES.get(("*", precision)) or TOLERANCES[("*", "fp32")]


def make_reference_image(i: int) -> Image.Image:
    """Reference image ``i``: a seeded mix of a smooth gradient, stripes and noise, 64×64 RGB."""
    rng = np.random.default_rng(REFERENCE_SEED + i)
    y, x = np.mgrid[0:REFERENCE_SIDE, 0:REFERENCE_SIDE] / REFERENCE_SIDE
    angle, period = rng.uniform(0, math.pi), rng.uniform(4, 16)
    stripes = 0.5 + 0.5 * np.sin((x * math.cos(angle) + y * math.sin(angle)) * REFERENCE_SIDE * 2 * math.pi / period)
    base = rng.uniform(0, 1, size=3)
    img = np.stack([(base[c] * (1 - x) + (1 - base[c]) * y) * 0.5 + stripes * 0.3 for c in range(3)], axis=-1)
    img += rng.normal(0, 0.08, size=img.shape)
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), "RGB")


def reference_names() -> list[str]:
    return [f"ka-{i}.png" for i in range(REFERENCE_COUNT)]


def reference_images() -> list[bytes]:
    """The shipped reference PNGs, in order."""
    return [(REFERENCE_DIR / name).read_bytes() for name in reference_names()]


def write_reference_images(directory: Path = REFERENCE_DIR) -> None:
    """(Re)draw the reference PNGs (run once; they ship in the repository)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(reference_names()):
        buf = io.BytesIO()
        make_reference_image(i).save(buf, format="PNG")
        (directory / name).write_bytes(buf.getvalue())


def reference_set_digest(images: Sequence[bytes]) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in images)).hexdigest()


def record(logits: Sequence[Sequence[float]], weights_digest: str, *, backend: str, precision: str, device: str,
           recorded_by: str) -> dict:
    """A known-answer record: each reference image's top-5 class indices and its logits."""
    images = reference_images()
    outputs = [{"image": name, "top5": [int(i) for i in np.argsort(-np.asarray(row), kind="stable")[:TOP_K]],
                "logits": [float(v) for v in row]} for name, row in zip(reference_names(), logits, strict=True)]
    return {"format": FORMAT, "weights_digest": weights_digest, "reference_set": reference_set_digest(images),
            "recorded_with": {"backend": backend, "precision": precision, "device": device, "by": recorded_by},
            "outputs": outputs}


def write(directory: Path, doc: dict) -> Path:
    path = Path(directory) / KNOWN_ANSWERS_FILE
    path.write_text(json.dumps(doc) + "\n")
    return path


def parse(text: str) -> dict:
    """A record read back, checked for shape (ValueError when it is not one)."""
    doc = json.loads(text)
    outs = doc.get("outputs") if isinstance(doc, dict) else None
    if (not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("weights_digest"), str)
            or not isinstance(outs, list) or len(outs) != REFERENCE_COUNT
            or not all(isinstance(o, dict) and isinstance(o.get("logits"), list) and o["logits"] for o in outs)):
        raise ValueError(f"not a format-{FORMAT} known-answer record of {REFERENCE_COUNT} reference images")
    return doc


def read(directory: Path) -> tuple[dict | None, str]:
    """The record beside the weights in ``directory``, or None with the reason."""
    path = Path(directory) / KNOWN_ANSWERS_FILE
    if not path.is_file():
        return None, f"not found: no {KNOWN_ANSWERS_FILE} beside the weights in {directory}"
    try:
        return parse(path.read_text()), ""
    except (OSError, ValueError) as exc:
        return None, f"unreadable {path}: {exc}"


def compare(doc: dict, observed: Sequence[Sequence[float]], backend: str, precision: str) -> tuple[bool, str]:
    """Whether ``observed`` logits (one row per reference image) reproduce the record, and the figures."""
    tol = tolerance(backend, precision)
    worst, flips = 0.0, 0
    for out, row in zip(doc["outputs"], observed, strict=False):
        want, got = np.asarray(out["logits"], dtype=np.float64), np.asarray(row, dtype=np.float64)
        if want.shape != got.shape:
            return False, (f"{out['image']}: {got.size} logits, the record has {want.size}")
        limit = tol.atol + tol.rtol * float(np.abs(want).max())
        worst = max(worst, float(np.abs(want - got).max()) / limit)
        flips += int(np.argmax(want) != np.argmax(got))
    if len(observed) != len(doc["outputs"]):
        return False, f"{len(observed)} answers for {len(doc['outputs'])} reference images"
    ok = worst <= 1.0 and not (tol.same_top1 and flips)
    said = (f"largest logit difference {worst:.3g}× the tolerance for {backend or '?'}/{precision or '?'} "
            f"({tol.why}: {tol.atol:g} + {tol.rtol:g}·max|logit|); top-1 changed on {flips} of {len(observed)} "
            f"reference images")
    return ok, said
