"""Domain ↔ protobuf conversions the services share (one place for each mapping)."""

from __future__ import annotations

from typing import Any

from versus.common.v1 import common_pb2

from services.common.backend import Capability, ModelInfo
from services.common.errors import VersusError
from services.common.status import status_for
from services.common.weights import WeightsProvenance

#: precision name ↔ ``versus.common.v1.Precision``.
PRECISION_TO_PROTO = {
    "fp32": common_pb2.PRECISION_FP32,
    "bf16": common_pb2.PRECISION_BF16,
    "fp16": common_pb2.PRECISION_FP16,
    "int8": common_pb2.PRECISION_INT8,
}
PRECISION_FROM_PROTO = {v: k for k, v in PRECISION_TO_PROTO.items()}


def enum_value(enum: Any, prefix: str, name: str) -> int:
    """A contract enum value from its lower-case spelling: ``(Variant, "VARIANT", "large-turbo")`` →
    ``VARIANT_LARGE_TURBO`` — the one naming rule every service and tool uses (ValueError if unknown)."""
    return int(enum.Value(f"{prefix}_{name.upper().replace('-', '_')}"))


def enum_name(enum: Any, prefix: str, value: int) -> str:
    """The inverse of :func:`enum_value`: ``VARIANT_LARGE_TURBO`` → ``"large-turbo"``."""
    return str(enum.Name(value)).removeprefix(prefix + "_").lower().replace("_", "-")


def capability_to_proto(c: Capability) -> common_pb2.Capability:
    return common_pb2.Capability(id=c.id, title=c.title, description=c.description)


def model_info_to_proto(info: ModelInfo) -> common_pb2.ModelInfo:
    """``versus.common.v1.ModelInfo`` for a backend's :class:`ModelInfo`."""
    return common_pb2.ModelInfo(
        id=info.id, family=info.family, variant=info.variant, parameters=info.parameters,
        precision=PRECISION_TO_PROTO.get(info.precision, common_pb2.PRECISION_UNSPECIFIED), device=info.device,
        backend=info.backend, license=info.license,
        capabilities=[capability_to_proto(c) for c in info.capabilities], properties=dict(info.properties),
        weights=weights_to_proto(info.weights) if info.weights is not None else None)


def weights_to_proto(w: WeightsProvenance) -> common_pb2.ServedWeightsInfo:
    """``versus.common.v1.ServedWeightsInfo``: source, revision, digest, reported kind and every file."""
    return common_pb2.ServedWeightsInfo(
        source=w.source, revision=w.revision, digest=w.digest, reported_kind=w.kind,
        files=[common_pb2.WeightFile(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes) for f in w.files])


def item_error(exc: VersusError) -> common_pb2.ItemError:
    """Per-item error of a bulk stream (the stream itself stays OK)."""
    field = exc.violations[0][0] if exc.violations else ""
    return common_pb2.ItemError(code=status_for(exc).value[0], message=exc.message, reason=exc.reason, field=field)
