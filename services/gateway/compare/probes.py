"""Live probes: small, bounded calls to the model services that turn capability claims into
observations (what was sent, what was seen, when, on which weights).

A probe only observes: it returns a :class:`ProbeResult` whose ``data`` the declared check
(:mod:`services.gateway.compare.checks`) judges. A probe that cannot run (service down, budget spent) returns
one with ``unavailable`` set and the reason read from the error details; a service that answers out of
contract (INTERNAL, UNKNOWN, a wrong count or shape, undecodable bytes, a refused valid request) gives
one with ``fault`` set. Probes never raise for downstream trouble (:func:`guarded`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from PIL import Image, ImageDraw
from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.vit.v1 import vit_pb2

from services.gateway.downstream import DownstreamError
from services.gateway.weights import ATTESTED, REAL

log = logging.getLogger(__name__)

#: Deadline of a probe's clean-up call (DeleteHead, UnloadAdapter), apart from the spent budget.
CLEANUP_TIMEOUT_S = 10.0
#: Weights whose values may decide claims about the checkpoint (accuracy, agreement, prompt adherence).
DECIDING_KINDS = (REAL, ATTESTED)
#: Codes that mean the service could not answer (an outage: UNAVAILABLE marks). Every other code is a
#: fault of the service toward a request within its advertised contract (CONTRADICTED marks), except the
#: deployment's own wiring (no such method, no permission, no such head/adapter), also an outage.
OUTAGE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                          grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
                          grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED,
                          grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
                          grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED})


class ContractError(Exception):
    """A reply that breaks the service's contract (wrong count or shape, empty labels, ...)."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise ContractError(what)


async def cleanup(call: Awaitable[Any]) -> None:
    """A clean-up call whose failure (already gone, service down) must not replace the probe's result."""
    try:
        await call
    except DownstreamError as exc:
        log.info("probe clean-up failed", extra={"component": exc.component, "error": exc.details.describe()})


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Budget:
    """The comparison's wall-clock budget; every downstream call gets at most what is left."""

    deadline: float  # time.monotonic()
    call_timeout_s: float

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self) -> float:
        return min(self.call_timeout_s, self.remaining())


@dataclass
class ProbeResult:
    """What one probe saw. ``data`` is its observation (judged by its check), ``detail`` the same in words."""

    probe: str
    detail: str = ""
    measurements: list[gateway_pb2.Measurement] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    weights: gateway_pb2.ServedWeights = field(default_factory=gateway_pb2.ServedWeights)
    at: str = ""
    unavailable: gateway_pb2.Unavailable | None = None
    #: The service answered out of contract: what was seen (the check is then CONTRADICTED).
    fault: str = ""

    @property
    def ran(self) -> bool:
        return self.unavailable is None

    @property
    def observed(self) -> bool:
        return self.unavailable is None and not self.fault


def unavailable(probe: str, exc: DownstreamError | str, weights: gateway_pb2.ServedWeights | None = None
                ) -> ProbeResult:
    if isinstance(exc, DownstreamError):
        d = exc.details
        item = gateway_pb2.Unavailable(component=exc.component, code=d.code.name, reason=d.reason,
                                       message=d.message)
    else:
        item = gateway_pb2.Unavailable(component=probe, code="", reason="", message=exc)
    return ProbeResult(probe, weights=weights or gateway_pb2.ServedWeights(), at=now_iso(), unavailable=item)


def faulty(probe: str, seen: str, weights: gateway_pb2.ServedWeights) -> ProbeResult:
    return ProbeResult(probe, f"the service answered out of contract: {seen}", weights=weights, at=now_iso(),
                       fault=seen)


def measurement(name: str, value: float, unit: str, probe: str, detail: str, weights: gateway_pb2.ServedWeights,
                at: str) -> gateway_pb2.Measurement:
    return gateway_pb2.Measurement(name=name, value=value, unit=unit, probe=probe, detail=detail, measured_at=at,
                                   weights=weights, mechanism_only=weights.kind not in DECIDING_KINDS)


def test_image(seed: int, size: int = 224) -> bytes:
    """A deterministic PNG with shapes and a gradient (a real image file, not random noise)."""
    image = Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    draw = ImageDraw.Draw(image)
    for i in range(6):
        x0, y0 = (seed * 17 + i * 31) % size, (seed * 29 + i * 47) % size
        draw.ellipse([x0, y0, x0 + size // 4, y0 + size // 5], fill=((i * 70) % 256, (seed * 40) % 256, 200 - i * 20))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def images_of(seeds: range | list[int]) -> list[common_pb2.Image]:
    return [common_pb2.Image(data=test_image(s), mime_type="image/png") for s in seeds]


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class VitInfo:
    component: str
    response: vit_pb2.GetModelInfoResponse
    weights: gateway_pb2.ServedWeights


async def guarded(probe: str, fn: Callable[[], Awaitable[ProbeResult]], weights: gateway_pb2.ServedWeights,
                  ) -> ProbeResult:
    """Run one probe. An outage becomes an unavailable result with the structured reason; a fault of the
    service (INTERNAL, UNKNOWN, a refused valid request, a reply out of contract) a faulty one."""
    try:
        return await fn()
    except DownstreamError as exc:
        if exc.details.code in OUTAGE_CODES:
            return unavailable(probe, exc, weights)
        d = exc.details
        return faulty(probe, f"{exc.component} answered {d.code.name} ({d.reason or 'no reason'}): {d.message}",
                      weights)
    except TimeoutError:
        return unavailable(probe, "budget exhausted", weights)
    except (ContractError, IndexError, ValueError, OSError) as exc:  # OSError: PIL cannot decode the bytes
        return faulty(probe, f"{type(exc).__name__}: {exc}", weights)
