"""ModelInferRequest bytes as they travel: read the few top-level fields routing needs and rewrite only the
model name and version, leaving every other byte of the client's request as it came.

The protobuf wire format is a sequence of (tag, value) records; a top-level field's record can be cut out and
replaced without decoding the rest (``inference.ModelInferRequest``: 1 model_name, 2 model_version, 3 id,
7 raw_input_contents). A forwarded request is the new fields 1 and 2 followed by every other record of the
client's bytes in their order, unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

MODEL_NAME, MODEL_VERSION, REQUEST_ID = 1, 2, 3


class WireError(ValueError):
    """The bytes are not a protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or over-long varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def records(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """Each top-level record as (field number, start, value start, end): ``data[start:end]`` is the record."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        field, kind = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0")
        if kind == 0:
            _, pos = _varint(data, pos)
            yield field, start, pos, pos
            continue
        if kind == 2:
            size, value = _varint(data, pos)
            pos = value + size
        elif kind in (1, 5):
            value, pos = pos, pos + (8 if kind == 1 else 4)
        else:
            raise WireError(f"wire type {kind} (groups) in field {field}")
        if pos > len(data):
            raise WireError(f"field {field} runs past the end")
        yield field, start, value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_field(field: int, text: str) -> bytes:
    raw = text.encode()
    return _encode_varint(field << 3 | 2) + _encode_varint(len(raw)) + raw


def strings(data: bytes) -> dict[int, str]:
    """The last value of the top-level string fields 1..3 (model name, version, id), as protobuf reads them."""
    out: dict[int, str] = {}
    for field, _start, value, end in records(data):
        if field in (MODEL_NAME, MODEL_VERSION, REQUEST_ID):
            try:
                out[field] = data[value:end].decode()
            except UnicodeDecodeError:
                raise WireError(f"field {field} is not UTF-8") from None
    return out


def rewrite(data: bytes, model_name: str, model_version: str) -> bytes:
    """``data`` with the model name and version replaced; every other record unchanged and in order."""
    kept = [data[start:end] for field, start, _value, end in records(data)
            if field not in (MODEL_NAME, MODEL_VERSION)]
    head = _string_field(MODEL_NAME, model_name) + (_string_field(MODEL_VERSION, model_version)
                                                    if model_version else b"")
    return head + b"".join(kept)


def without_model(data: bytes) -> bytes:
    """The records other than the model name and version (what a pass-through must leave unchanged)."""
    return b"".join(data[start:end] for field, start, _value, end in records(data)
                    if field not in (MODEL_NAME, MODEL_VERSION))


def input_digest(data: bytes) -> str:
    """sha256 of the request's inputs: its input tensors and raw contents (records 5 and 7) as sent."""
    digest = hashlib.sha256()
    for field, start, _value, end in records(data):
        if field in (5, 7):
            digest.update(data[start:end])
    return digest.hexdigest()
