"""What a check's judgement returns, and the deciders of numeric claims a measurement speaks to.

A judgement turns what a probe observed into a :class:`Verdict`: VERIFIED_LIVE, CONTRADICTED, or
UNDECIDED (the observation cannot speak to the claim under this deployment's conditions, or the
catalog states no figure to check against). A decider does the same for one numeric catalog claim
(``batch10_throughput_ratio``, ``int8_speedup``, ``default_steps``) from the measurement of that metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from versus.gateway.v1 import gateway_pb2

if TYPE_CHECKING:
    from services.gateway.compare.probes import ProbeResult

VERIFIED = gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE
CONTRADICTED = gateway_pb2.EVIDENCE_MARK_CONTRADICTED
UNDECIDED = gateway_pb2.EVIDENCE_MARK_UNSPECIFIED
#: A live numeric claim is met within this relative tolerance ("~9x" is met by 8.1x).
LIVE_TOLERANCE = 0.10
#: int8 "< 1-2% accuracy loss": top-1 agreement with fp32 at least this, over PRECISION_IMAGES images.
AGREEMENT_BAR = 0.98
#: The row of a figure the catalog does not state.
NO_FIGURE = "no published figure to check against"


@dataclass(frozen=True)
class Verdict:
    mark: int  # VERIFIED, CONTRADICTED or UNDECIDED
    why: str


def verdict(problems: list[str], holds: str) -> Verdict:
    return Verdict(CONTRADICTED, "; ".join(problems)) if problems else Verdict(VERIFIED, holds)


Decider = Callable[[float, "ProbeResult", bool], Verdict]  # (claimed value, result, weights may decide)


def _value(r: ProbeResult, name: str) -> float:
    return next(m.value for m in r.measurements if m.name == name)


def at_least(name: str) -> Decider:
    def decide(claimed: float, r: ProbeResult, _weights_ok: bool) -> Verdict:
        value = _value(r, name)
        met = value >= claimed * (1 - LIVE_TOLERANCE)
        return Verdict(VERIFIED if met else CONTRADICTED, f"measured {value:.4g}, {'meets' if met else 'below'} "
                                                          f"{claimed:g} within {LIVE_TOLERANCE:.0%}")
    return decide


def equal_to(name: str) -> Decider:
    def decide(claimed: float, r: ProbeResult, _weights_ok: bool) -> Verdict:
        value = _value(r, name)
        return Verdict(VERIFIED if value == claimed else CONTRADICTED, f"measured {value:g}, claimed {claimed:g}")
    return decide


def int8(claimed: float, r: ProbeResult, weights_ok: bool) -> Verdict:
    """Both halves: the speed-up (any weights) and top-1 agreement (only weights that may decide)."""
    speed, agree = r.data["speedup"], r.data["agreement"]
    if speed < claimed * (1 - LIVE_TOLERANCE):
        return Verdict(CONTRADICTED, f"{speed:.2f}x, below {claimed:g}x")
    if not weights_ok:
        return Verdict(UNDECIDED, f"the speed-up {speed:.2f}x meets {claimed:g}x, but top-1 agreement on these "
                                  f"weights ({agree:.1%}) says nothing about accuracy loss")
    ok = agree >= AGREEMENT_BAR
    return Verdict(VERIFIED if ok else CONTRADICTED, f"{speed:.2f}x and top-1 agreement {agree:.1%} over "
                                                     f"{r.data['images']} images (bar {AGREEMENT_BAR:.0%})")


#: Deciders that judge the weights themselves (int8: the speed half holds on any weights).
WEIGHTS_AWARE: frozenset[Decider] = frozenset({int8})
