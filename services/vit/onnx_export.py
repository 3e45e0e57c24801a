"""``versus export onnx``: a checkpoint → an ONNX model directory the service loads (no gRPC).

The output directory holds ``model.onnx`` (one file, dynamic batch axis; fp32, or int8 through ONNX
Runtime's quantization tools), the checkpoint's ``preprocessor_config.json`` and ``config.json``
(labels, sizes) and ``versus-onnx.json`` (what was done and the parity measured). Parity is checked
before anything is written: fp32 logits must match torch within ``FP32_TOLERANCE`` on the images
given (else :class:`ExportError`); for int8 the top-1 agreement with torch fp32 is measured and
recorded (it only means something on trained weights).

The graph has three outputs, so every Classify/Embed request can be served from it:
``logits`` [B, labels], ``last_hidden_state`` [B, tokens, hidden] (after the final LayerNorm) and
``hidden_states`` [B, layers + 1, tokens, hidden] (before it; fetched only when a request asks).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from services.common.errors import VersusError
from services.vit.engine import ONNX_FILE
from services.vit.onnx_engine import EXPORT_META, INPUT, OUTPUTS, OnnxEngine, session_options
from services.vit.torch_engine import TorchEngine

log = logging.getLogger(__name__)

#: Largest |logit difference| allowed between the fp32 export and torch.
FP32_TOLERANCE = 1e-4
OPSET = 18
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
QUANTIZATIONS = ("none", "int8")


class ExportError(VersusError):
    """The export failed or its parity check did not hold."""


@dataclass
class ExportReport:
    """What ``versus-onnx.json`` records."""

    source: str
    precision: str
    quantization: str  # none | dynamic | static-qdq
    opset: int = OPSET
    outputs: tuple[str, ...] = OUTPUTS
    parity_images: int = 0
    max_abs_logit_diff_fp32: float = 0.0
    top1_agreement_with_torch_fp32: float = 1.0
    calibration_images: int = 0
    torch_version: str = field(default_factory=lambda: torch.__version__)


class _Graph(torch.nn.Module):
    """What is exported: ViTForImageClassification's math with the three outputs above."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model.vit(pixel_values, output_hidden_states=True)
        final = out.last_hidden_state
        return self.model.classifier(final[:, 0, :]), final, torch.stack(out.hidden_states, dim=1)


def image_files(directory: Path) -> list[Path]:
    """Image files directly in ``directory``, sorted by name."""
    if not directory.is_dir():
        raise ExportError(f"{directory} is not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ExportError(f"{directory} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def synthetic_images(n: int = 8, size: int = 224) -> list[Image.Image]:
    """Deterministic structured images, round-tripped through PNG like files a client sends."""
    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        grad = np.linspace(0, 255, size)[None, :, None] * np.ones((size, 1, 3))
        arr = np.clip(grad * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, format="PNG")
        out.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def load_images(paths: Sequence[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except OSError as exc:
            raise ExportError(f"cannot read image {path}: {exc}") from None
    return images


def _pixels(model: TorchEngine, images: Sequence[Image.Image]) -> np.ndarray:
    return np.stack([model.preprocess(im) for im in images])


def _torch_export(model: TorchEngine, path: Path) -> None:
    size = model.image_size
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        torch.onnx.export(_Graph(model.model).eval(), (example,), str(path), input_names=[INPUT],
                          output_names=list(OUTPUTS), opset_version=OPSET, dynamo=True,
                          external_data=False, verbose=False, dynamic_shapes={"pixel_values": {0: batch}})
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the user needs the message
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc)[:500]}") from exc


def _run_onnx(path: Path, pixels: np.ndarray, threads: int = 0) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {INPUT: pixels[i:i + 32]})[0] for i in range(0, len(pixels), 32)])


class _Calibration:
    """onnxruntime.quantization's CalibrationDataReader over preprocessed images, 8 at a time."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._batches = iter([pixels[i:i + 8] for i in range(0, len(pixels), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch}


def quantize(fp32: Path, out: Path, calibration: np.ndarray | None) -> str:
    """int8 with ONNX Runtime: dynamic (weights int8, activations per call) or static QDQ from calibration
    pixels. Only MatMul/Gemm are quantized (the bulk of ViT's compute; int8 Conv runs slower on ORT CPU)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    ops = ["MatMul", "Gemm"]
    if calibration is None:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=ops)
        return "dynamic"
    quantize_static(str(fp32), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=ops, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return "static-qdq"


def export_onnx(model_dir: Path, out_dir: Path, *, quantize_to: str = "none", calibration: Path | None = None,
                images: Path | None = None, log_fn: Callable[[str], None] = log.info) -> ExportReport:
    """Export ``model_dir`` to ``out_dir`` (see the module docstring); returns what was recorded."""
    if quantize_to not in QUANTIZATIONS:
        raise ExportError(f"--quantize must be one of {QUANTIZATIONS}")
    if calibration is not None and quantize_to == "none":
        raise ExportError("--calibration only applies with --quantize int8")
    model = TorchEngine(str(model_dir), precision="fp32", device="cpu")
    model.load()
    check_images = load_images(image_files(images)) if images else None
    calib = _pixels(model, load_images(image_files(calibration))) if calibration else None
    pixels = _pixels(model, check_images or synthetic_images(size=model.image_size))
    reference = model.forward(pixels).logits
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        log_fn(f"exporting {model_dir} (opset {OPSET}, dynamic batch axis)")
        _torch_export(model, fp32)
        diff = float(np.abs(_run_onnx(fp32, pixels) - reference).max())
        log_fn(f"fp32 parity on {len(pixels)} images: max |logit diff| = {diff:.2e} (tolerance {FP32_TOLERANCE})")
        if not diff <= FP32_TOLERANCE:
            raise ExportError(f"fp32 ONNX logits differ from torch by {diff:.2e} (> {FP32_TOLERANCE})")
        report = ExportReport(str(model_dir), "fp32", "none", parity_images=len(pixels), max_abs_logit_diff_fp32=diff)
        final = fp32
        if quantize_to == "int8":
            final = Path(tmp) / "int8.onnx"
            report.quantization = quantize(fp32, final, calib)
            report.precision = "int8"
            report.calibration_images = 0 if calib is None else len(calib)
            agree = float(np.mean(_run_onnx(final, pixels).argmax(1) == reference.argmax(1)))
            report.top1_agreement_with_torch_fp32 = agree
            log_fn(f"int8 ({report.quantization}) top-1 agreement with torch fp32: {agree:.2%} on {len(pixels)} images")
        shutil.move(str(final), out_dir / ONNX_FILE)
    model.processor.save_pretrained(out_dir)
    model.config.save_pretrained(out_dir)
    (out_dir / EXPORT_META).write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    OnnxEngine(str(out_dir)).load()  # the directory is one the service can load
    log_fn(f"wrote {out_dir / ONNX_FILE} ({(out_dir / ONNX_FILE).stat().st_size / 1e6:.1f} MB)")
    return report
