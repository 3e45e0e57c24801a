"""Open Inference Protocol (KServe V2, Triton's gRPC API) ↔ domain: tensors, requests, metadata.

No transport here: :class:`ModelRepository` takes and returns the protocol's messages, and each
service supplies :class:`OipModel` adapters that speak domain tensors (:class:`Tensor`) to its own
backend — through the same validation, admission and batching as the native API. The servicer
(:mod:`services.common.oip_servicer`) only passes messages in and out.

The messages are the ones ``tritonclient`` generates (package ``inference``): one copy per process,
shared with the ViT's Triton engine — a second registration of ``inference.*`` would clash.

Decoding checks, in order, and names the input in every INVALID_ARGUMENT: the input exists for the
model (and no required one is missing), its datatype, its rank and fixed dimensions, then its data
(typed ``contents`` or ``raw_input_contents``; length-prefixed elements for BYTES) against the element
count the shape implies. Shapes never size an allocation: data is decoded first, then compared.
"""

from __future__ import annotations

import abc
import math
import struct
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

from services.common.errors import InvalidArgument, NotFound, quote
from services.common.oip_info import Batching, ModelStats, model_config

#: The one version every model has (requests may leave the version empty).
MODEL_VERSION = "1"
#: Response parameter of Triton's decoupled streaming extension: true on a request's last response.
FINAL_RESPONSE = "triton_final_response"
#: Typed-contents field per datatype (FP16 and BF16 travel only as raw bytes).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
DATATYPES = (*CONTENTS, "FP16")

Parameter = bool | int | float | str


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: name, datatype and shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Tensor:
    """A decoded tensor: ``data`` has the tensor's shape (an object array of ``bytes`` for BYTES)."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True)
class InferRequest:
    """A ModelInferRequest in domain terms, inputs checked against the model's specs."""

    model: str
    id: str
    inputs: Mapping[str, Tensor]
    parameters: Mapping[str, Parameter] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()

    def scalar(self, name: str) -> object | None:
        """The single element of input ``name``, or None when the (optional) input was not sent."""
        tensor = self.inputs.get(name)
        if tensor is None:
            return None
        value = tensor.data.reshape(-1)[0]
        return value.item() if isinstance(value, np.generic) else value  # BYTES elements are already bytes

    def int_parameter(self, name: str) -> int | None:
        value = self.parameters.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument(f"parameters.{name}", f"must be an integer, got {type(value).__name__}")
        return value  # type: ignore[return-value]

    def str_parameter(self, name: str) -> str:
        value = self.parameters.get(name, "")
        if not isinstance(value, str):
            raise InvalidArgument(f"parameters.{name}", f"must be a string, got {type(value).__name__}")
        return value


class OipModel(abc.ABC):
    """One model a service exposes over the protocol; an adapter onto the service's backend.

    ``max_batch_size`` > 0: the first dimension of every input and output is the batch (Triton's
    convention), at most that long; ``batching``: how requests share compute batches (None: they do
    not). The adapter records where a successful request's time went in ``stats``
    (:meth:`ModelStats.phases`); the repository records outcomes.
    """

    name: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    batching: Batching | None = None
    #: ModelConfig.backend: what computes the model.
    backend_name: str = ""

    @cached_property
    def stats(self) -> ModelStats:
        return ModelStats()

    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether the model can serve now."""

    @abc.abstractmethod
    async def infer(self, request: InferRequest, timeout_s: float | None) -> list[Tensor]:
        """The output tensors for ``request`` (all declared outputs it produces)."""

    async def infer_stream(self, request: InferRequest,
                           timeout_s: float | None) -> AsyncIterator[tuple[list[Tensor], bool]]:
        """(tensors, final) responses; a model without progress answers once."""
        yield await self.infer(request, timeout_s), True


def elements(t: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    """The tensor's elements in row-major order, from raw bytes or typed contents."""
    if raw is not None:
        if t.datatype == "BYTES":
            try:
                return deserialize_bytes_tensor(raw)
            except struct.error:
                raise InvalidArgument(t.name, "raw BYTES contents are not 4-byte-length-prefixed elements") from None
        dtype = np.dtype(triton_to_np_dtype(t.datatype))
        if len(raw) % dtype.itemsize:
            raise InvalidArgument(t.name, f"{len(raw)} raw bytes are not a whole number of {t.datatype} elements")
        return np.frombuffer(raw, dtype)
    if t.datatype not in CONTENTS:
        raise InvalidArgument(t.name, f"{t.datatype} data must be sent in raw_input_contents")
    values = getattr(t.contents, CONTENTS[t.datatype])
    if t.datatype == "BYTES":
        return np.array(list(values), dtype=np.object_)
    wide = np.array(values)
    data = wide.astype(triton_to_np_dtype(t.datatype))
    if len(values) and not np.array_equal(data, wide):
        raise InvalidArgument(t.name, f"values out of range for {t.datatype}")
    return data


def _check_header(t: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec) -> tuple[int, ...]:
    if t.datatype != spec.datatype:
        raise InvalidArgument(t.name, f"datatype {quote(t.datatype)}, expected {spec.datatype}")
    shape = tuple(t.shape)
    wanted = list(spec.shape)
    if len(shape) != len(wanted) or any(d < 0 or (w >= 0 and d != w) for d, w in zip(shape, wanted, strict=True)):
        raise InvalidArgument(t.name, f"shape {list(shape)[:8]} does not fit {wanted} (-1: any size)")
    return shape


def decode_tensor(t: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec, raw: bytes | None) -> Tensor:
    """One input, checked against ``spec`` (INVALID_ARGUMENT naming it when anything is off)."""
    shape = _check_header(t, spec)
    if raw is not None and t.HasField("contents"):
        raise InvalidArgument(t.name, "send typed contents or raw_input_contents, not both")
    flat = elements(t, raw)
    count = math.prod(shape)
    if count != flat.size:
        raise InvalidArgument(t.name, f"shape {list(shape)} needs {count} elements, got {flat.size}")
    return Tensor(t.name, t.datatype, flat.reshape(shape))


def _parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Parameter]:
    out: dict[str, Parameter] = {}
    for key, p in params.items():
        kind = p.WhichOneof("parameter_choice")
        if kind is not None:
            out[key] = getattr(p, kind)
    return out


def encode_tensor(t: Tensor) -> tuple[pb.ModelInferResponse.InferOutputTensor, bytes]:
    """The output's metadata and its raw bytes (how Triton answers; tritonclient reads either form)."""
    if t.datatype == "BYTES":
        raw = serialize_byte_tensor(t.data.reshape(-1)).item() if t.data.size else b""
    else:
        raw = np.ascontiguousarray(t.data, dtype=triton_to_np_dtype(t.datatype)).tobytes()
    return pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.data.shape), raw


def bytes_tensor(name: str, rows: Sequence[Sequence[bytes]] | Sequence[bytes]) -> Tensor:
    """A BYTES tensor from a (nested) list of ``bytes``."""
    data = np.empty(np.shape(rows), dtype=np.object_)
    data[...] = rows
    return Tensor(name, "BYTES", data)


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


class ModelRepository:
    """The models one server exposes, and the protocol's messages in and out of them."""

    def __init__(self, server_name: str, version: str, models: Sequence[OipModel],
                 extensions: Sequence[str] = ()) -> None:
        self.server_name = server_name
        self.version = version
        self.extensions = tuple(extensions)
        self.models = {m.name: m for m in models}

    def model(self, name: str, version: str = "") -> OipModel:
        """The model, or NOT_FOUND (with ResourceInfo) for an unknown name or version."""
        model = self.models.get(name)
        if model is None or version not in ("", MODEL_VERSION):
            what = f"model {quote(name)}" + (f" version {quote(version)}" if version else "")
            raise NotFound(f"{what} is not served here; models: {', '.join(self.models)} (version {MODEL_VERSION})",
                           resource_type="model", resource_name=name)
        return model

    def server_ready(self) -> bool:
        return all(m.ready() for m in self.models.values())

    def model_ready(self, name: str, version: str = "") -> bool:
        """False for an unknown model too (readiness probes never error)."""
        model = self.models.get(name)
        return model is not None and version in ("", MODEL_VERSION) and model.ready()

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self.server_name, version=self.version, extensions=self.extensions)

    def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        m = self.model(name, version)
        return pb.ModelMetadataResponse(name=m.name, versions=[MODEL_VERSION], platform=m.platform,
                                        inputs=[_tensor_metadata(s) for s in m.inputs],
                                        outputs=[_tensor_metadata(s) for s in m.outputs])

    def model_config(self, name: str, version: str = "") -> pb.ModelConfigResponse:
        m = self.model(name, version)
        return pb.ModelConfigResponse(config=model_config(m.name, m.platform, m.backend_name, m.max_batch_size,
                                                          m.inputs, m.outputs, m.batching))

    def statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        """One model's statistics, or every model's when ``name`` is empty."""
        models = [self.model(name, version)] if name else list(self.models.values())
        return pb.ModelStatisticsResponse(model_stats=[m.stats.proto(m.name, MODEL_VERSION) for m in models])

    @staticmethod
    async def infer_stream(model: OipModel, request: InferRequest,
                           timeout_s: float | None) -> AsyncIterator[tuple[list[Tensor], bool]]:
        """The model's (tensors, final) responses, the request's outcome counted in its statistics."""
        started, ok = time.perf_counter(), False
        try:
            async for tensors, final in model.infer_stream(request, timeout_s):
                ok = ok or final
                yield tensors, final
        finally:
            model.stats.outcome(ok, time.perf_counter() - started)

    @staticmethod
    async def infer(model: OipModel, request: InferRequest, timeout_s: float | None) -> list[Tensor]:
        """The model's output tensors, the request's outcome counted in its statistics."""
        started, ok = time.perf_counter(), False
        try:
            tensors = await model.infer(request, timeout_s)
            ok = True
            return tensors
        finally:
            model.stats.outcome(ok, time.perf_counter() - started)

    def decode(self, r: pb.ModelInferRequest) -> tuple[OipModel, InferRequest]:
        """The model a request names and the request in domain terms, every input checked (a request
        refused here counts as failed in the model's statistics)."""
        model = self.model(r.model_name, r.model_version)
        try:
            return model, self._decode(model, r)
        except InvalidArgument:
            model.stats.outcome(False, 0.0)
            raise

    @staticmethod
    def _decode(model: OipModel, r: pb.ModelInferRequest) -> InferRequest:
        specs = {s.name: s for s in model.inputs}
        raw = list(r.raw_input_contents)
        if raw and len(raw) != len(r.inputs):
            raise InvalidArgument("raw_input_contents", f"{len(raw)} entries for {len(r.inputs)} inputs")
        inputs: dict[str, Tensor] = {}
        for i, t in enumerate(r.inputs):
            if t.name not in specs:
                raise InvalidArgument(t.name or f"inputs[{i}]", f"{model.name} has no such input; inputs: "
                                      f"{', '.join(specs)}")
            if t.name in inputs:
                raise InvalidArgument(t.name, "sent twice")
            inputs[t.name] = decode_tensor(t, specs[t.name], raw[i] if raw else None)
        missing = [s.name for s in model.inputs if not s.optional and s.name not in inputs]
        if missing:
            raise InvalidArgument(missing[0], "required input is missing", more=[(m, "required") for m in missing[1:]])
        outputs = {s.name for s in model.outputs}
        for i, o in enumerate(r.outputs):
            if o.name not in outputs:
                raise InvalidArgument(o.name or f"outputs[{i}]", f"{model.name} has no such output; outputs: "
                                      f"{', '.join(outputs)}")
        return InferRequest(model.name, r.id, inputs, _parameters(r.parameters), tuple(o.name for o in r.outputs))

    @staticmethod
    def encode(request: InferRequest, tensors: Sequence[Tensor], final: bool | None = None) -> pb.ModelInferResponse:
        """The response: the requested outputs (all when none were named), the request id echoed;
        ``final`` set adds Triton's ``triton_final_response`` parameter (streams)."""
        # Progress responses (final False) carry their own outputs whatever the request asked for.
        wanted = [t for t in tensors if not request.outputs or t.name in request.outputs or final is False]
        response = pb.ModelInferResponse(model_name=request.model, model_version=MODEL_VERSION, id=request.id)
        for tensor in wanted:
            meta, raw = encode_tensor(tensor)
            response.outputs.append(meta)
            response.raw_output_contents.append(raw)
        if final is not None:
            response.parameters[FINAL_RESPONSE].bool_param = final
        return response
