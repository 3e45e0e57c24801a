"""ViT on a Triton Inference Server: the service keeps validation, decoding and preprocessing and sends
pixel batches over ``tritonclient.grpc.aio``; Triton's dynamic batcher does the batching (no gRPC
server code here, only Triton's client).

The model must follow the export's contract (``versus triton export``): input ``pixel_values``
[B, 3, S, S] FP32, outputs ``logits``, ``last_hidden_state``, ``hidden_states``. Triton's failures map
to the service's errors in ONE table (:func:`triton_error`): its outage is UNAVAILABLE, never INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from services.common.errors import Cancelled, ConfigError, DeadlineExceeded, ModelLoadError, VersusError
from services.vit.engine import Engine, ForwardOutput
from services.vit.errors import TritonBusy, TritonRejected, TritonUnavailable
from services.vit.onnx_engine import INPUT, OUTPUTS
from services.vit.triton_repo import PRECISION_PARAMETER

log = logging.getLogger(__name__)

#: Triton status code (``StatusCode.X`` names) → the service's error class; anything else is an outage.
_CODES: dict[str, type[VersusError]] = {
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "CANCELLED": Cancelled,
    "RESOURCE_EXHAUSTED": TritonBusy,
    "INVALID_ARGUMENT": TritonRejected,
}


def triton_error(exc: BaseException, *, retry_after_s: float = 0.1) -> VersusError:
    """The service's error for a failed Triton call (the message is bounded; never INTERNAL)."""
    status = getattr(exc, "status", lambda: None)() or ""
    code = str(status).rsplit(".", 1)[-1] or "UNREACHABLE"
    text = getattr(exc, "message", lambda: str(exc))() or type(exc).__name__
    message = f"Triton ({code}): {text[:300]}"
    cls = _CODES.get(code, TritonUnavailable)
    if cls is TritonRejected:
        return TritonRejected("images", message)
    if cls is TritonBusy:
        return TritonBusy(message, retry_after_s=retry_after_s)
    return cls(message)


#: gRPC channel settings toward Triton (see connect()).
TRITON_CHANNEL_ARGS = [
    ("grpc.lb_policy_name", "round_robin"), ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000), ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
]


class TritonEngine(Engine):
    """A ViT served by Triton; preprocessing and labels come from the local model directory."""

    backend = "triton"
    #: Batches in flight to Triton at once: its own dynamic batcher and instances take them from there.
    concurrency = 16

    def __init__(self, source: str, *, url: str, model_name: str, precision: str = "auto",
                 allow_download: bool = False) -> None:
        super().__init__(source, precision=precision, allow_download=allow_download)
        self.url = url
        self.model_name = model_name
        self.max_batch_size = 1
        self.precision_reason = "the Triton model's precision"
        self._client = None

    @property
    def device_name(self) -> str:
        return f"triton:{self.url}"

    def load(self) -> None:
        """The local half (processor, labels, sizes); :meth:`start` does the remote one."""
        self.load_processor()

    # -- remote ---------------------------------------------------------------------------------
    async def start(self, timeout_s: float, poll_s: float = 0.5) -> None:
        """Wait (up to ``timeout_s``) for the model to be ready, check its configuration, warm it up."""
        from tritonclient.grpc.aio import InferenceServerClient

        # channel_args replace tritonclient's defaults: round_robin over every address the URL resolves to
        # (a headless Service of Triton pods), keepalive, and the message sizes restated.
        self._client = InferenceServerClient(self.url, channel_args=TRITON_CHANNEL_ARGS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await self.ready():
            if loop.time() >= deadline:
                raise ModelLoadError(f"Triton model {self.model_name!r} at {self.url} not ready after {timeout_s:.0f}s")
            await asyncio.sleep(poll_s)
        try:
            config = (await self._client.get_model_config(self.model_name)).config
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own exception type
            raise ModelLoadError(f"cannot read Triton model {self.model_name!r}'s config: {triton_error(exc)}") from exc
        self._check(config)
        size = self.image_size
        await self.infer(np.zeros((1, 3, size, size), np.float32), frozenset(), timeout_s=max(timeout_s, 30.0))
        log.info("triton model ready", extra={"url": self.url, "model": self.model_name, "precision": self.precision,
                                              "max_batch_size": self.max_batch_size})

    def _check(self, config) -> None:
        """The Triton model must fit this checkpoint: same labels count, our input and outputs."""
        inputs = {i.name: list(i.dims) for i in config.input}
        outputs = {o.name: list(o.dims) for o in config.output}
        size = self.image_size
        if inputs.get(INPUT) != [3, size, size] or set(OUTPUTS) - set(outputs):
            raise ModelLoadError(f"Triton model {self.model_name!r} has inputs {inputs} and outputs {list(outputs)}; "
                                 f"expected {INPUT} [3, {size}, {size}] and {list(OUTPUTS)} (versus triton export)")
        if outputs["logits"] != [len(self.id2label)]:
            raise ModelLoadError(f"Triton model {self.model_name!r} has {outputs['logits']} logits but "
                                 f"{self.source} has {len(self.id2label)} labels")
        self.max_batch_size = max(1, int(config.max_batch_size))
        param = config.parameters.get(PRECISION_PARAMETER)
        served = param.string_value if param is not None and param.string_value else "fp32"
        if self.requested_precision not in ("auto", served):
            raise ConfigError(f"Triton model {self.model_name!r} runs {served}, not {self.requested_precision}")
        self.precision = served

    async def ready(self) -> bool:
        """Whether Triton answers and reports the model ready (False on any failure)."""
        if self._client is None:
            return False
        try:
            return bool(await self._client.is_model_ready(self.model_name))
        except Exception:  # noqa: BLE001 - unreachable or failing means not ready
            return False

    async def infer(self, pixel_values: np.ndarray, layers: frozenset[int] = frozenset(),
                    timeout_s: float | None = None) -> ForwardOutput:
        """One request's images, in chunks of Triton's max batch size sent concurrently."""
        if self._client is None:
            raise TritonUnavailable("not connected to Triton")
        step = self.max_batch_size
        chunks = [pixel_values[i:i + step] for i in range(0, len(pixel_values), step)]
        parts = await asyncio.gather(*(self._infer_chunk(c, layers, timeout_s) for c in chunks))
        logits = np.concatenate([p[0] for p in parts])
        final = np.concatenate([p[1] for p in parts])
        hidden_all = np.concatenate([p[2] for p in parts]) if layers else None
        return ForwardOutput(logits, final, {i: hidden_all[:, i] for i in layers} if layers else {})

    async def _infer_chunk(self, pixels: np.ndarray, layers: frozenset[int], timeout_s: float | None) -> list:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        names = OUTPUTS if layers else OUTPUTS[:2]
        inp = InferInput(INPUT, list(pixels.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        try:
            result = await self._client.infer(self.model_name, [inp], outputs=[InferRequestedOutput(n) for n in names],
                                              client_timeout=timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - tritonclient and grpc raise their own types
            raise triton_error(exc) from None
        return [result.as_numpy(n) for n in names]

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.close()
            except Exception:  # noqa: BLE001, S110 - closing a dead channel
                pass
