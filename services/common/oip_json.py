"""The Open Inference Protocol's REST bodies ↔ its gRPC messages: JSON tensors and Triton's binary-data
extension. No transport: :mod:`services.common.oip_rest` hands bodies in and out.

A REST inference request becomes the same ``ModelInferRequest`` a gRPC client would send, so it meets
the same checks in :meth:`ModelRepository.decode`. JSON ``data`` (flat or nested, row-major) becomes
typed contents; an input with ``parameters.binary_data_size`` takes that many bytes from the binary
part of the body, after the JSON header of ``Inference-Header-Content-Length`` bytes. Datatypes
without typed contents (FP16) travel only as binary data, as over gRPC.

A response output is binary (``parameters.binary_data_size``) when the request asks for it (output
``parameters.binary_data``, else request ``parameters.binary_data_output``), and also when it is a
BYTES output whose elements are not UTF-8 (a PNG cannot be a JSON string); otherwise JSON ``data``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from services.common.errors import InvalidArgument, quote
from services.common.oip import CONTENTS, DATATYPES, Tensor, elements, encode_tensor

HEADER_LENGTH = "Inference-Header-Content-Length"
#: Request parameters that steer the transport, not the model.
BINARY_OUTPUT, TIMEOUT_US = "binary_data_output", "timeout"
#: Nesting that JSON ``data`` may have (a tensor of this rank is far beyond any model here).
MAX_NESTING = 32
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


@dataclass(frozen=True)
class RestInfer:
    """A REST inference request as the protocol's message, with what the transport needs besides."""

    request: pb.ModelInferRequest
    binary_outputs: Mapping[str, bool]  # output name → binary, for outputs the request names
    binary_default: bool  # for outputs it does not name
    timeout_s: float | None


# -- messages → JSON ---------------------------------------------------------------------------------
def _ints(descriptor: Descriptor, data: dict[str, Any]) -> None:
    """Proto3 JSON writes 64-bit integers as strings; the protocol's REST API writes numbers."""
    for f in descriptor.fields:
        if f.name not in data:
            continue
        value = data[f.name]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            inner = f.message_type.fields_by_name["value"]
            if inner.message_type is not None:
                for item in value.values():
                    _ints(inner.message_type, item)
            elif inner.type in _INT64:
                data[f.name] = {k: int(v) for k, v in value.items()}
        elif f.message_type is not None:
            for item in value if f.is_repeated else [value]:
                _ints(f.message_type, item)
        elif f.type in _INT64:
            data[f.name] = [int(v) for v in value] if f.is_repeated else int(value)


def message_json(message: Message) -> dict[str, Any]:
    """A protocol message as its REST JSON: field names as in the .proto, integers as numbers."""
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)
    _ints(message.DESCRIPTOR, data)
    return data


# -- request body → ModelInferRequest ------------------------------------------------------------------
def _object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(field, f"must be a JSON object, got {type(value).__name__}")
    return value


def _list(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidArgument(field, f"must be a JSON array, got {type(value).__name__}")
    return value


def _flatten(data: object, field: str) -> list[Any]:
    """Row-major elements of (nested) JSON ``data``."""
    out: list[Any] = []
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= MAX_NESTING:
                raise InvalidArgument(field, f"nested deeper than {MAX_NESTING} levels")
            stack.extend((x, depth + 1) for x in reversed(item))
        else:
            out.append(item)
    return out


def _parameter(p: pb.InferParameter, value: object, field: str) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int) and -(2**63) <= value < 2**63:
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    elif isinstance(value, str):
        p.string_param = value
    else:
        raise InvalidArgument(field, f"must be a boolean, a 64-bit integer, a number or a string, got {quote(value)}")


def _binary_input(raw: dict[str, Any], name: str, size: object, binary: memoryview, offset: int) -> bytes:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{name}.parameters.binary_data_size", f"must be a byte count, got {quote(size)}")
    if offset + size > len(binary):
        raise InvalidArgument(name, f"binary data truncated: {size} bytes declared, {len(binary) - offset} left "
                                    "in the body")
    if "data" in raw:
        raise InvalidArgument(name, "send 'data' or binary data, not both")
    return bytes(binary[offset:offset + size])


def _typed_input(raw: dict[str, Any], name: str, datatype: str, t: pb.ModelInferRequest.InferInputTensor) -> None:
    if datatype not in CONTENTS:
        raise InvalidArgument(name, f"{quote(datatype)} data must be sent as binary data"
                              if datatype in DATATYPES else f"unknown datatype {quote(datatype)}")
    values = _flatten(raw.get("data", []), name)
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise InvalidArgument(name, "BYTES data in JSON must be strings (send other bytes as binary data)")
        values = [v.encode("utf-8", "surrogatepass") for v in values]
    try:
        getattr(t.contents, CONTENTS[datatype]).extend(values)
    except (TypeError, ValueError):
        raise InvalidArgument(name, f"data holds values that are not {datatype}") from None


def _input(raw: dict[str, Any], field: str, binary: memoryview, offset: int,
           t: pb.ModelInferRequest.InferInputTensor) -> tuple[bytes | None, int]:
    """Fill ``t`` from one JSON input; its raw bytes (binary data) or None, and the new offset."""
    name, datatype, shape = raw.get("name"), raw.get("datatype"), _list(raw.get("shape"), f"{field}.shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidArgument(field, "needs a string 'name' and a string 'datatype'")
    if not all(isinstance(d, int) and not isinstance(d, bool) and abs(d) < 2**62 for d in shape):
        raise InvalidArgument(f"{name}.shape", f"must be integers, got {quote(shape)}")
    t.name, t.datatype = name, datatype
    t.shape.extend(shape)
    size = _object(raw.get("parameters", {}), f"{name}.parameters").get("binary_data_size")
    if size is not None:
        chunk = _binary_input(raw, name, size, binary, offset)
        return chunk, offset + len(chunk)
    _typed_input(raw, name, datatype, t)
    return None, offset


def _header(body: bytes, header_length: str | None) -> dict[str, Any]:
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > size:
            raise InvalidArgument(HEADER_LENGTH, f"must be a byte count within the {size}-byte body, "
                                                 f"got {quote(header_length)}")
        size = int(header_length)
    try:
        raw = _object(json.loads(body[:size]), "request")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, nesting bombs
        raise InvalidArgument("request", f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(raw.get("id", ""), str):
        raise InvalidArgument("id", "must be a string")
    return raw


def _inputs(raw: dict[str, Any], binary: memoryview, request: pb.ModelInferRequest) -> None:
    offset, raws = 0, []
    for i, item in enumerate(_list(raw.get("inputs", []), "inputs")):
        chunk, offset = _input(_object(item, f"inputs[{i}]"), f"inputs[{i}]", binary, offset, request.inputs.add())
        raws.append(chunk)
    if offset != len(binary):
        raise InvalidArgument("request", f"{len(binary) - offset} bytes of binary data that no input declares")
    if any(r is not None for r in raws):  # raw_input_contents is all or nothing: typed inputs go raw too
        for t, chunk in zip(request.inputs, raws, strict=True):
            if chunk is None:
                chunk = encode_tensor(Tensor(t.name, t.datatype, elements(t, None)))[1]
                t.ClearField("contents")
            request.raw_input_contents.append(chunk)


def _outputs(raw: dict[str, Any], request: pb.ModelInferRequest) -> dict[str, bool]:
    binary = {}
    for i, item in enumerate(_list(raw.get("outputs", []), "outputs")):
        out = _object(item, f"outputs[{i}]")
        name = out.get("name")
        if not isinstance(name, str):
            raise InvalidArgument(f"outputs[{i}].name", "must be a string")
        params = _object(out.get("parameters", {}), f"{name}.parameters")
        if params.get("classification"):
            raise InvalidArgument(f"{name}.parameters.classification", "not supported: the models answer LABELS")
        binary[name] = bool(params.get("binary_data", False))
        request.outputs.add(name=name)
    return binary


def parse_infer(body: bytes, header_length: str | None, model: str, version: str) -> RestInfer:
    """The inference request in ``body`` (``header_length``: the Inference-Header-Content-Length header)."""
    raw = _header(body, header_length)
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=raw.get("id", ""))
    _inputs(raw, memoryview(body)[int(header_length or len(body)):], request)
    binary_outputs = _outputs(raw, request)
    parameters = dict(_object(raw.get("parameters", {}), "parameters"))
    binary_default = bool(parameters.pop(BINARY_OUTPUT, False))
    timeout_us = parameters.pop(TIMEOUT_US, None)
    if timeout_us is not None and (not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us <= 0):
        raise InvalidArgument(f"parameters.{TIMEOUT_US}", f"must be microseconds > 0, got {quote(timeout_us)}")
    for key, value in parameters.items():
        _parameter(request.parameters[key], value, f"parameters.{key}")
    return RestInfer(request, binary_outputs, binary_default, timeout_us / 1e6 if timeout_us else None)


# -- ModelInferResponse → response body ----------------------------------------------------------------
def _json_data(datatype: str, raw: bytes) -> list[Any] | None:
    """The elements as JSON values, or None when they cannot be JSON (BYTES that are not UTF-8)."""
    if datatype == "BYTES":
        try:
            return [bytes(v).decode("utf-8") for v in deserialize_bytes_tensor(raw)] if raw else []
        except UnicodeDecodeError:
            return None
    return np.frombuffer(raw, triton_to_np_dtype(datatype)).tolist()


def infer_body(response: pb.ModelInferResponse, rest: RestInfer) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary data, the length of its JSON header."""
    outputs, chunks = [], []
    for meta, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        out: dict[str, Any] = {"name": meta.name, "datatype": meta.datatype, "shape": list(meta.shape)}
        data = None if rest.binary_outputs.get(meta.name, rest.binary_default) else _json_data(meta.datatype, raw)
        if data is None:
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = data
        outputs.append(out)
    header = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        header["id"] = response.id
    text = json.dumps(header).encode()
    return (text + b"".join(chunks), len(text)) if chunks else (text, None)
