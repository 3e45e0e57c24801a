"""ViT on ONNX Runtime: an in-process session over a ``versus export onnx`` directory (no gRPC).

The directory holds ``model.onnx`` (fp32, or int8 when exported with ``--quantize int8``), the
processor config and ``config.json`` (labels, sizes) and ``versus-onnx.json`` (what the export did).
Preprocessing is the shared one (:class:`services.vit.engine.Engine`); the session runs on the device thread.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from services.common.errors import ConfigError, ModelLoadError
from services.vit.engine import ONNX_FILE, ForwardOutput, LocalEngine

log = logging.getLogger(__name__)

#: The export's own record (precision, quantization, parity measured at export).
EXPORT_META = "versus-onnx.json"
#: Output names of the exported graph, in order.
OUTPUTS = ("logits", "last_hidden_state", "hidden_states")
INPUT = "pixel_values"


def read_export_meta(directory: Path) -> dict:
    """``versus-onnx.json`` of an export directory (ModelLoadError when it is not one)."""
    path = directory / EXPORT_META
    if not (directory / ONNX_FILE).is_file() or not path.is_file():
        raise ModelLoadError(f"{directory} is not an ONNX export (no {ONNX_FILE} and {EXPORT_META}); "
                             "make one with `versus export onnx --model DIR --out DIR`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def session_options(threads: int):
    """ONNX Runtime options: ``threads`` intra-op threads (0 = ORT's default), one inter-op thread.

    No spinning: the intra-op pool would otherwise busy-wait between calls and steal the cores that
    decoding and gRPC need on a small CPU machine.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def providers_for(device: str) -> list[str]:
    """CUDA first when asked for (or 'auto') and the installed onnxruntime has it; else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise ConfigError(f"device {device!r}: this onnxruntime has no CUDAExecutionProvider ({available})")
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEngine(LocalEngine):
    """An exported ViT run by an ``onnxruntime.InferenceSession`` on the device thread."""

    backend = "onnx"

    def __init__(self, source: str, *, precision: str = "auto", device: str = "auto", threads: int = 0,
                 executor: Executor | None = None) -> None:
        super().__init__(source, precision=precision, executor=executor)
        self.device = device
        self.threads = threads
        self.session = None
        self.meta: dict = {}
        self.precision_reason = "the exported file's precision"

    @property
    def device_name(self) -> str:
        assert self.session is not None, "load() first"
        return "cuda:0" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def load(self) -> None:
        import onnxruntime as ort

        directory = Path(self.source)
        self.meta = read_export_meta(directory)
        exported = self.meta.get("precision", "fp32")
        if self.requested_precision not in ("auto", exported):
            raise ConfigError(f"{directory} holds a {exported} export; precision {self.requested_precision!r} needs "
                              f"its own export (`versus export onnx ... --quantize int8` for int8) or 'auto'")
        self.precision = exported
        self.load_processor()
        try:
            self.session = ort.InferenceSession(str(directory / ONNX_FILE), session_options(self.threads),
                                                providers=providers_for(self.device))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"cannot load {directory / ONNX_FILE}: {exc}") from exc
        names = [o.name for o in self.session.get_outputs()]
        if tuple(names) != OUTPUTS:
            raise ModelLoadError(f"{directory / ONNX_FILE} has outputs {names}, expected {list(OUTPUTS)}")
        log.info("model loaded", extra={"source": self.source, "backend": self.backend, "precision": self.precision,
                                        "quantization": self.meta.get("quantization", "none"),
                                        "device": self.device_name, "threads": self.threads})

    def forward(self, pixel_values: np.ndarray, layers: frozenset[int] = frozenset()) -> ForwardOutput:
        assert self.session is not None, "load() first"
        wanted = list(OUTPUTS if layers else OUTPUTS[:2])
        outs = self.session.run(wanted, {INPUT: np.ascontiguousarray(pixel_values, dtype=np.float32)})
        hidden = {i: outs[2][:, i] for i in layers} if layers else {}
        return ForwardOutput(outs[0], outs[1], hidden)
