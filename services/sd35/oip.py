"""The hosted SD3.5 variants on the Open Inference Protocol (adapters onto :class:`Sd35Backend`; no gRPC).

Models ``sd35-large``, ``sd35-large-turbo`` and ``sd35-medium`` — those this server hosts. Inputs, each
of shape [1]: ``PROMPT`` BYTES (UTF-8), and optionally ``NEGATIVE_PROMPT`` BYTES, ``SEED`` INT64,
``STEPS``, ``WIDTH`` and ``HEIGHT`` INT32, ``GUIDANCE`` FP32; what is left out gets the native API's
default. Outputs: ``IMAGE`` BYTES [1] (PNG) and ``SEED`` INT64 [1] (the seed used: a fixed seed gives
byte-identical images). Through ModelStreamInfer (Triton's decoupled extension) progress responses
carry ``STEP`` and ``TOTAL`` INT32 [1]; the last carries ``IMAGE`` and ``SEED``.

ModelConfig: no batch dimension (max_batch_size 0), no dynamic batching. Statistics, from the
native timings: queue, text encoding (compute_input), denoising and VAE decode (compute_infer; one
execution of batch size 1 per generation), PNG encoding (compute_output).

Requests go through the same validation, queue and device thread as Generate; the violations the
validation names are renamed to the inputs the client sent (``guidance_scale`` → ``GUIDANCE``).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import numpy as np

from services.common.errors import InvalidArgument
from services.common.oip import InferRequest, OipModel, Tensor, TensorSpec, bytes_tensor
from services.common.oip_info import Batch, Phases
from services.sd35.backend import Sd35Backend
from services.sd35.requests import Progress, Request, Result

#: Native field → OIP input, for validation errors.
INPUT_OF_FIELD = {"prompt": "PROMPT", "negative_prompt": "NEGATIVE_PROMPT", "seed": "SEED", "steps": "STEPS",
                  "width": "WIDTH", "height": "HEIGHT", "guidance_scale": "GUIDANCE"}
INPUTS = (
    TensorSpec("PROMPT", "BYTES", (1,)),
    TensorSpec("NEGATIVE_PROMPT", "BYTES", (1,), optional=True),
    TensorSpec("SEED", "INT64", (1,), optional=True),
    TensorSpec("STEPS", "INT32", (1,), optional=True),
    TensorSpec("WIDTH", "INT32", (1,), optional=True),
    TensorSpec("HEIGHT", "INT32", (1,), optional=True),
    TensorSpec("GUIDANCE", "FP32", (1,), optional=True),
)
OUTPUTS = (TensorSpec("IMAGE", "BYTES", (1,)), TensorSpec("SEED", "INT64", (1,)),
           TensorSpec("STEP", "INT32", (1,)), TensorSpec("TOTAL", "INT32", (1,)))


def _text(request: InferRequest, name: str) -> str:
    value = request.scalar(name)
    if value is None:
        return ""
    try:
        return bytes(value).decode("utf-8")  # type: ignore[arg-type]
    except UnicodeDecodeError:
        raise InvalidArgument(name, "is not valid UTF-8") from None


def _renamed(exc: InvalidArgument) -> InvalidArgument:
    (field, problem), *more = [(INPUT_OF_FIELD.get(f, f), p) for f, p in exc.violations]
    return InvalidArgument(field, problem, more=more)


def _int32(name: str, value: int) -> Tensor:
    return Tensor(name, "INT32", np.array([value], np.int32))


class Sd35Model(OipModel):
    """One hosted variant."""

    platform = "versus_sd35"
    inputs = INPUTS
    outputs = OUTPUTS

    backend_name = "diffusers"

    def __init__(self, backend: Sd35Backend, variant: str) -> None:
        self.backend = backend
        self.variant = variant
        self.name = f"sd35-{variant}"
        self._executions = itertools.count()

    def _record(self, result: Result) -> None:
        t = result.timings_ms
        infer_s = (t["denoising_ms"] + t["decode_ms"]) / 1e3
        self.stats.phases(Phases(1, t["queue_ms"] / 1e3, t["text_encoding_ms"] / 1e3, infer_s, t["encode_ms"] / 1e3,
                                 (Batch(next(self._executions), 1, infer_s),)))

    def ready(self) -> bool:
        return self.backend.ready

    def _request(self, r: InferRequest) -> Request:
        return Request(prompt=_text(r, "PROMPT"), negative_prompt=_text(r, "NEGATIVE_PROMPT"), variant=self.variant,
                       width=r.scalar("WIDTH") or 0, height=r.scalar("HEIGHT") or 0,  # type: ignore[arg-type]
                       steps=r.scalar("STEPS"), guidance=r.scalar("GUIDANCE"), seed=r.scalar("SEED"))  # type: ignore[arg-type]

    async def infer_stream(self, request: InferRequest,
                           timeout_s: float | None) -> AsyncIterator[tuple[list[Tensor], bool]]:
        try:
            async for event in self.backend.generate(self._request(request), timeout_s):
                if isinstance(event, Progress):
                    yield [_int32("STEP", event.step), _int32("TOTAL", event.total_steps)], False
                elif isinstance(event, Result):
                    self._record(event)
                    yield [bytes_tensor("IMAGE", event.images[:1]),
                           Tensor("SEED", "INT64", np.array(event.seeds[:1], np.int64))], True
        except InvalidArgument as exc:
            raise _renamed(exc) from None

    async def infer(self, request: InferRequest, timeout_s: float | None) -> list[Tensor]:
        async for tensors, final in self.infer_stream(request, timeout_s):
            if final:
                return tensors
        raise AssertionError("generation ended without a result")  # the backend always ends with a Result


def oip_models(backend: Sd35Backend) -> list[OipModel]:
    return [Sd35Model(backend, variant) for variant in backend.runners]
