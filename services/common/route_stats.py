"""A route's statistics, from one epoch's paired arrays to what its state shows: confidence sequences for
agreement, top-5 overlap, error rates and latency quantiles, the declared bounds' decisions, the agreement
history for the narrowing chart, and accuracy on labelled traffic (docs/SHADOW.md).

Every bound's sequence runs at alpha / len(bounds) (a union bound), so that all of them hold at once, at
every moment, with probability >= 1 - alpha; the shown intervals of unbounded metrics run at alpha.
Pure numpy; no grpc, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.common.confseq import (
    BETTING_METHOD,
    Interval,
    empirical_quantile,
    mean_cs,
    mean_cs_history,
    quantile_cs,
)

#: The metrics a bound may name, and how people may write them (the issue's words, snake_case, hyphens).
METRICS = ("agreement", "top5_overlap", "p50_ratio", "p90_ratio", "p99_ratio", "error_rate_diff")
_ALIASES = {
    "agreement": "agreement",
    "top1_agreement": "agreement",
    "top5_overlap": "top5_overlap",
    "top5": "top5_overlap",
    "p50_ratio": "p50_ratio",
    "p90_ratio": "p90_ratio",
    "p99_ratio": "p99_ratio",
    "error_rate_diff": "error_rate_diff",
    "error_rate_difference": "error_rate_diff",
    "error_diff": "error_rate_diff",
}
_QUANTILE_OF = {"p50_ratio": 0.5, "p90_ratio": 0.9, "p99_ratio": 0.99}
_OPS = (">=", "<=")
_BOUND = re.compile(r"^\s*([A-Za-z0-9 _-]{1,64}?)\s*(>=|<=|≥|≤)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")
_MAX_BOUNDS = 32
_MAX_TEXT = 4096

UNDECIDED, HOLDS, VIOLATED = "undecided", "holds", "violated"
DIFF_METHOD = BETTING_METHOD + " on (d + 1) / 2"
RATIO_METHOD = "ratio of quantile CSs (Howard & Ramdas 2022)"
HISTORY_POINTS = 200


@dataclass(frozen=True)
class Bound:
    """A declared bound a candidate must meet, e.g. agreement >= 0.99."""

    metric: str
    op: str
    value: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown bound metric {self.metric[:64]!r}; known: {', '.join(METRICS)}")
        if self.op not in _OPS:
            raise ValueError(f"bound operator must be >= or <=, got {self.op[:8]!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"bound value must be finite, got {self.value!r}")
        if self.metric in ("agreement", "top5_overlap") and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"{self.metric} bound must be in [0, 1], got {self.value!r}")
        if self.metric == "error_rate_diff" and not -1.0 <= self.value <= 1.0:
            raise ValueError(f"error_rate_diff bound must be in [-1, 1], got {self.value!r}")
        if self.metric in _QUANTILE_OF and self.value <= 0.0:
            raise ValueError(f"{self.metric} bound must be > 0, got {self.value!r}")

    def text(self) -> str:
        """The canonical spelling, e.g. "agreement >= 0.99" (what metrics labels and pages show)."""
        return f"{self.metric} {self.op} {self.value:g}"


def parse_bounds(text: str) -> tuple[Bound, ...]:
    """Bounds from comma-separated text such as "agreement >= 0.99, p99 ratio <= 1.10, error-rate difference
    <= 0.001": metric names in the issue's words or snake_case (spaces and hyphens count as underscores),
    ">=" / "<=" (or "≥" / "≤"), a number. A clear ValueError names what is wrong; duplicates are refused."""
    if not isinstance(text, str):
        raise ValueError("bounds must be text")
    if len(text) > _MAX_TEXT:
        raise ValueError(f"bounds text is {len(text)} characters; at most {_MAX_TEXT}")
    if "\x00" in text:
        raise ValueError("bounds text contains a NUL character")
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("no bounds given")
    if len(parts) > _MAX_BOUNDS:
        raise ValueError(f"{len(parts)} bounds given; at most {_MAX_BOUNDS}")
    bounds: list[Bound] = []
    for part in parts:
        match = _BOUND.match(part)
        if match is None:
            raise ValueError(
                f"cannot read bound {part.strip()[:64]!r}: expected 'METRIC >= VALUE' or 'METRIC <= VALUE'")
        name, op, value = match.groups()
        key = re.sub(r"[\s-]+", "_", name.strip().lower())
        if key not in _ALIASES:
            raise ValueError(f"unknown bound metric {name.strip()[:64]!r}; known: {', '.join(METRICS)}")
        bound = Bound(_ALIASES[key], {"≥": ">=", "≤": "<="}.get(op, op), float(value))
        if bound in bounds:
            raise ValueError(f"bound {bound.text()!r} given twice")
        bounds.append(bound)
    return tuple(bounds)


DEFAULT_BOUNDS = parse_bounds("agreement >= 0.99, p99_ratio <= 1.10, error_rate_diff <= 0.001")
DEFAULT_ALPHA = 0.05


@dataclass
class PairArrays:
    """One epoch of one route, in record order: rows (agree, top5), pairs (errors, latencies) and labelled
    rows (whether each side's top-1 matched the feedback label)."""

    agree: np.ndarray
    top5: np.ndarray
    primary_error: np.ndarray
    candidate_error: np.ndarray
    primary_latency_s: np.ndarray
    candidate_latency_s: np.ndarray
    primary_right: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    candidate_right: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass(frozen=True)
class BoundResult:
    bound: Bound
    state: str  # UNDECIDED, HOLDS or VIOLATED
    interval: Interval


@dataclass(frozen=True)
class LabelledAccuracy:
    """Both models' accuracy on the same labelled rows, and the anytime-valid paired comparison: a CS on
    P(candidate is the one right | exactly one is right). McNemar's exact p is shown for reference only."""

    labelled: int
    primary: Interval
    candidate: Interval
    discordant: int
    candidate_right: int
    candidate_share_of_discordant: Interval
    verdict: str
    mcnemar_p_fixed_n: float


@dataclass(frozen=True)
class RouteStats:
    agreement: Interval
    top5_overlap: Interval
    primary_error_rate: Interval
    candidate_error_rate: Interval
    primary_p99: Interval
    candidate_p99: Interval
    primary_p50: float
    primary_p90: float
    candidate_p50: float
    candidate_p90: float
    bounds: list[BoundResult]
    history: list[tuple[int, float, float, float]]  # (n, lower, upper, estimate) of agreement
    accuracy: LabelledAccuracy


def decide(bound: Bound, interval: Interval) -> str:
    """holds when the whole interval is inside the bound, violated when it is wholly outside; otherwise (or
    when an end is NaN) undecided. The ends are closed: lower == value holds a ">=" bound."""
    lower, upper, value = interval.lower, interval.upper, bound.value
    if math.isnan(lower) or math.isnan(upper):
        return UNDECIDED
    if bound.op == ">=":
        return HOLDS if lower >= value else VIOLATED if upper < value else UNDECIDED
    return HOLDS if upper <= value else VIOLATED if lower > value else UNDECIDED


def ratio_interval(candidate: Interval, primary: Interval) -> Interval:
    """[c.lower / p.upper, c.upper / p.lower] for positive quantities (latencies): an end that is infinite or
    divides by 0 becomes the trivial end (0 below, +inf above), so the bound stays undecided on that side."""
    c_low = max(candidate.lower, 0.0)
    lower = c_low / primary.upper if math.isfinite(primary.upper) and primary.upper > 0 else 0.0
    upper = candidate.upper / primary.lower if primary.lower > 0 and math.isfinite(candidate.upper) else math.inf
    estimate = candidate.estimate / primary.estimate if primary.estimate > 0 else math.nan
    return Interval(lower, upper, estimate, min(candidate.n, primary.n), RATIO_METHOD)


def difference_interval(candidate_error: np.ndarray, primary_error: np.ndarray, alpha: float) -> Interval:
    """CS on E[candidate error - primary error] per pair: the betting CS on (d + 1) / 2 in [0, 1], mapped back."""
    d = np.asarray(candidate_error, dtype=np.float64) - np.asarray(primary_error, dtype=np.float64)
    inner = mean_cs((d + 1.0) / 2.0, alpha)
    estimate = 2.0 * inner.estimate - 1.0 if inner.n else math.nan
    return Interval(2.0 * inner.lower - 1.0, 2.0 * inner.upper - 1.0, estimate, inner.n, DIFF_METHOD)


def mcnemar_exact(only_primary: int, only_candidate: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 with none): 2 P(Bin(b + c, 1/2) <=
    min(b, c)), capped at 1, summed in log space (no scipy)."""
    n = only_primary + only_candidate
    if n == 0:
        return 1.0
    k = min(only_primary, only_candidate)
    i = np.arange(k + 1, dtype=np.float64)
    log_terms = math.lgamma(n + 1) - np.array([math.lgamma(j + 1) + math.lgamma(n - j + 1) for j in i])
    top = float(log_terms.max())
    log_tail = top + math.log(float(np.exp(log_terms - top).sum())) - n * math.log(2.0)
    return min(1.0, 2.0 * math.exp(log_tail))


def labelled_accuracy(primary_right: np.ndarray, candidate_right: np.ndarray, alpha: float) -> LabelledAccuracy:
    p_right = np.asarray(primary_right, dtype=bool)
    c_right = np.asarray(candidate_right, dtype=bool)
    if p_right.shape != c_right.shape:
        raise ValueError("primary_right and candidate_right must have one entry per labelled row each")
    discordant = p_right != c_right
    share = mean_cs(c_right[discordant].astype(np.float64), alpha)
    if share.lower > 0.5:
        verdict = "candidate more accurate"
    elif share.upper < 0.5:
        verdict = "primary more accurate"
    else:
        verdict = f"no difference shown ({int(discordant.sum())} discordant)"
    return LabelledAccuracy(
        labelled=int(p_right.size),
        primary=mean_cs(p_right.astype(np.float64), alpha),
        candidate=mean_cs(c_right.astype(np.float64), alpha),
        discordant=int(discordant.sum()),
        candidate_right=int((c_right & discordant).sum()),
        candidate_share_of_discordant=share,
        verdict=verdict,
        mcnemar_p_fixed_n=mcnemar_exact(int((p_right & discordant).sum()), int((c_right & discordant).sum())),
    )


def _finite(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def route_statistics(a: PairArrays, bounds: Sequence[Bound], alpha: float) -> RouteStats:
    """Everything a route's state shows, from one epoch's arrays. Bounded metrics run at alpha / len(bounds)
    (the agreement interval and history too, when agreement is bounded, so the chart shows what decides);
    a pNN_ratio's two quantile sequences each at half its level; unbounded metrics at alpha."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    level = alpha / len(bounds) if bounds else alpha
    metrics = {b.metric for b in bounds}
    agree = np.asarray(a.agree, dtype=np.float64).ravel()
    top5 = _finite(a.top5)
    p_err = np.asarray(a.primary_error, dtype=bool).ravel()
    c_err = np.asarray(a.candidate_error, dtype=bool).ravel()
    if p_err.shape != c_err.shape:
        raise ValueError("primary_error and candidate_error must have one entry per pair each")
    p_lat, c_lat = _finite(a.primary_latency_s), _finite(a.candidate_latency_s)

    agreement_level = level if "agreement" in metrics else alpha
    history = mean_cs_history(agree, agreement_level, HISTORY_POINTS)
    agreement = mean_cs(agree, agreement_level)
    if history:  # the running intersection over the history is a CS too; the interval shown is the chart's last
        n, lower, upper, _ = history[-1]
        agreement = Interval(lower, upper, agreement.estimate, n, agreement.method)
    top5_interval = mean_cs(top5, level if "top5_overlap" in metrics else alpha)

    results: list[BoundResult] = []
    for bound in bounds:
        if bound.metric == "agreement":
            interval = agreement
        elif bound.metric == "top5_overlap":
            interval = top5_interval
        elif bound.metric == "error_rate_diff":
            interval = difference_interval(c_err, p_err, level)
        else:
            q = _QUANTILE_OF[bound.metric]
            interval = ratio_interval(quantile_cs(c_lat, q, level / 2), quantile_cs(p_lat, q, level / 2))
        results.append(BoundResult(bound, decide(bound, interval), interval))

    return RouteStats(
        agreement=agreement,
        top5_overlap=top5_interval,
        primary_error_rate=mean_cs(p_err.astype(np.float64), alpha),
        candidate_error_rate=mean_cs(c_err.astype(np.float64), alpha),
        primary_p99=quantile_cs(p_lat, 0.99, alpha),
        candidate_p99=quantile_cs(c_lat, 0.99, alpha),
        primary_p50=empirical_quantile(p_lat, 0.5),
        primary_p90=empirical_quantile(p_lat, 0.9),
        candidate_p50=empirical_quantile(c_lat, 0.5),
        candidate_p90=empirical_quantile(c_lat, 0.9),
        bounds=results,
        history=history,
        accuracy=labelled_accuracy(a.primary_right, a.candidate_right, alpha),
    )


def latency_histogram(
    primary_s: np.ndarray, candidate_s: np.ndarray, bins: int = 30
) -> tuple[list[float], list[int], list[int]]:
    """Shared edges (seconds, log-spaced between the smallest and largest finite positive latency of either
    side) and each side's counts: counts[i] are latencies in [edges[i], edges[i+1]) (the last bin closed)."""
    p, c = _finite(primary_s), _finite(candidate_s)
    both = np.concatenate((p, c))
    both = both[both > 0]
    if both.size == 0:
        return [], [], []
    low, high = float(both.min()), float(both.max())
    edges = np.geomspace(low, high if high > low else low * 1.001, bins + 1)
    return ([float(e) for e in edges], [int(k) for k in np.histogram(p, edges)[0]],
            [int(k) for k in np.histogram(c, edges)[0]])
