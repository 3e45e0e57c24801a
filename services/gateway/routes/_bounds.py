"""Interim bound parsing until services.common.route_stats lands (then this file goes)."""

from __future__ import annotations

import re
from dataclasses import dataclass

METRICS = {"agreement": "agreement", "top5 overlap": "top5_overlap", "top5_overlap": "top5_overlap",
           "p50 ratio": "p50_ratio", "p90 ratio": "p90_ratio", "p99 ratio": "p99_ratio",
           "error-rate difference": "error_rate_diff", "error rate difference": "error_rate_diff"}
for _m in ("p50_ratio", "p90_ratio", "p99_ratio", "error_rate_diff"):
    METRICS[_m] = _m
_BOUND = re.compile(r"\s*(.+?)\s*(>=|<=)\s*([0-9.eE+-]+)\s*")


@dataclass(frozen=True)
class Bound:
    metric: str
    op: str
    value: float

    def text(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def parse_bounds(text: str) -> tuple[Bound, ...]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = _BOUND.fullmatch(part)
        if not m or m.group(1).lower() not in METRICS:
            raise ValueError(f"{part[:60]!r} is not METRIC >= VALUE or METRIC <= VALUE")
        out.append(Bound(METRICS[m.group(1).lower()], m.group(2), float(m.group(3))))
    return tuple(out)


DEFAULT_BOUNDS = parse_bounds("agreement >= 0.99, p99_ratio <= 1.10, error_rate_diff <= 0.001")
DEFAULT_ALPHA = 0.05
