"""Triton Python-backend model for an exported ViT: ``model.py`` of a ``versus triton export --platform python``
repository. Copied as is; it runs inside Triton's Python stub, never in the service.

It runs the same ``model.onnx`` with ONNX Runtime on the CPU, so a repository that runs here gives the
logits of the ``onnx`` backend. Triton's dynamic batcher hands ``execute`` several requests: they are
concatenated into one batch, run once, and split back, computing only the outputs some request asked
for. Needs numpy and onnxruntime importable by the stub (PYTHONPATH).
"""

import json
import os

import numpy as np

INPUT = "pixel_values"  # the ONNX graph's input (config.pbtxt may name the model's input otherwise)
OUTPUTS = ("logits", "last_hidden_state", "hidden_states")


class TritonPythonModel:
    """The Python backend's entry point (names fixed by Triton)."""

    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0") or 0)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        try:
            pixels = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
            wanted = [[n for n in r.requested_output_names() if n in OUTPUTS] or list(OUTPUTS[:2]) for r in requests]
            names = [n for n in OUTPUTS if any(n in w for w in wanted)]
            outputs = dict(zip(names, self.session.run(names, {INPUT: np.concatenate(pixels)}), strict=True))
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for batch, names_wanted in zip(pixels, wanted, strict=True):
            end = start + len(batch)
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(outputs[n][start:end])) for n in names_wanted]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses
