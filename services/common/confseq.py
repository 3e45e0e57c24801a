"""Anytime-valid confidence sequences: intervals that hold at every sample size at once, so a page may be
looked at after every new observation without inflating the error (docs/SHADOW.md, "The statistics").

- Means of [0, 1] observations: the hedged capital process with predictable plug-in bets of Waudby-Smith &
  Ramdas (2023), "Estimating means of bounded random variables by betting", JRSS-B 86(1): for each candidate
  mean m two gamblers bet on X - m; the CS at time t is every m neither has multiplied its capital by 1/alpha.
- Quantiles: the fixed-quantile CS of Howard & Ramdas (2022), "Sequential estimation of quantiles with
  applications to A/B-testing and best-arm identification", Bernoulli 28(3), Theorem 1: order statistics at
  ranks t*p -/+ f_t, where f_t is the two-sided beta-binomial mixture boundary for centred Bernoulli(p) sums
  (Howard, Ramdas, McAuliffe & Sekhon 2021, Ann. Statist. 49(2)), as the authors' ``confseq`` package does.

numpy and the standard library only (no scipy here: the ranker computes route state). Every interval is rounded
outward, never inward, so each stays a valid confidence sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BETTING_METHOD = "betting (Waudby-Smith & Ramdas 2023)"
QUANTILE_METHOD = "quantile CS (Howard & Ramdas 2022)"

#: Hedged capital: the weight of the "mean is higher" gambler (theta) and the bet truncation c (their 1/2).
_THETA = 0.5
_TRUNC = 0.5
#: Bisection steps for an interval's ends: 2**-40 is far below anything a page shows.
_STEPS = 40
#: The sample size the quantile boundary is tuned for (it is valid at every t; tightest near this one).
QUANTILE_T_OPT = 1000


@dataclass(frozen=True)
class Interval:
    """A confidence sequence's value at sample size n: [lower, upper] holds together with every other n."""

    lower: float
    upper: float
    estimate: float
    n: int
    method: str


def _check(x: np.ndarray, alpha: float) -> np.ndarray:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError("observations must be finite and in [0, 1]")
    return arr


def plug_in_bets(x: np.ndarray, alpha: float) -> np.ndarray:
    """The predictable plug-in bets lambda_t of Waudby-Smith & Ramdas (2023), for one gambler at level alpha/2:
    sqrt(2 log(2/alpha) / (sigma2_{t-1} t log(1 + t))), with the regularised running mean
    mu_t = (1/2 + sum x) / (t + 1) and variance sigma2_t = (1/4 + sum (x_i - mu_i)^2) / (t + 1), sigma2_0 = 1/4.
    Each bet uses only the observations before it."""
    t = np.arange(1, x.size + 1, dtype=np.float64)
    mu = (0.5 + np.cumsum(x)) / (t + 1.0)
    sigma2 = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1.0)
    sigma2_before = np.concatenate(([0.25], sigma2[:-1]))
    return np.sqrt(2.0 * math.log(2.0 / alpha) / (sigma2_before * t * np.log1p(t)))


def _log_capitals(x: np.ndarray, bets: np.ndarray, m: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-step log factors of the two gamblers for the candidate mean m (bets truncated at c/m and c/(1-m),
    so that no factor reaches 0)."""
    up = np.minimum(bets, _TRUNC / m) if m > 0.0 else bets
    down = np.minimum(bets, _TRUNC / (1.0 - m)) if m < 1.0 else bets
    return np.log1p(up * (x - m)), np.log1p(-down * (x - m))


def betting_capital(x: np.ndarray, m: float, alpha: float) -> np.ndarray:
    """The hedged capital process K_t(m) = max(theta K+_t(m), (1 - theta) K-_t(m)) for t = 1..n: a nonnegative
    martingale when the true mean is m, so by Ville's inequality it ever reaches 1/alpha with probability at
    most alpha. The confidence sequence is {m : K_t(m) < 1/alpha}."""
    arr = _check(x, alpha)
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"m must be in [0, 1], got {m!r}")
    up, down = _log_capitals(arr, plug_in_bets(arr, alpha), m)
    return np.maximum(_THETA * np.exp(np.cumsum(up)), (1.0 - _THETA) * np.exp(np.cumsum(down)))


def _ends(x: np.ndarray, bets: np.ndarray, alpha: float) -> tuple[float, float]:
    """The CS at the last observation. K+ falls and K- rises with m, so the set is an interval: its lower end
    is where theta K+ crosses 1/alpha, its upper end where (1 - theta) K- does. Bisection keeps the excluded
    side, so the ends returned are the outer ones."""
    threshold = math.log(1.0 / alpha)
    up_log = math.log(_THETA)
    down_log = math.log(1.0 - _THETA)

    def up_excluded(m: float) -> bool:
        return up_log + float(np.sum(_log_capitals(x, bets, m)[0])) >= threshold

    def down_excluded(m: float) -> bool:
        return down_log + float(np.sum(_log_capitals(x, bets, m)[1])) >= threshold

    lower = 0.0
    if up_excluded(0.0):
        lo, hi = 0.0, 1.0
        for _ in range(_STEPS):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if up_excluded(mid) else (lo, mid)
        lower = lo
    upper = 1.0
    if down_excluded(1.0):
        lo, hi = 0.0, 1.0
        for _ in range(_STEPS):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if down_excluded(mid) else (mid, hi)
        upper = hi
    return lower, upper


def betting_cs(x: np.ndarray, alpha: float, grid: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Running (lower[t], upper[t]), t = 1..n, for the mean of x in [0, 1] (i.i.d., in order), holding for every
    t at once with probability >= 1 - alpha: the hedged-capital CS of Waudby-Smith & Ramdas (2023), computed
    on a grid of `grid` + 1 candidate means (ends rounded outward to the grid), with the running intersection
    (still a CS). For the value at the last t only, :func:`mean_cs` is exact and much cheaper."""
    arr = _check(x, alpha)
    return _grid_cs(arr, alpha, np.linspace(0.0, 1.0, grid + 1), np.arange(1, arr.size + 1))


def _grid_cs(x: np.ndarray, alpha: float, grid: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CS at the given times (1-based, increasing) on a grid of candidate means containing 0 and 1: the
    lower end is the largest grid mean the rising gambler excludes (every smaller mean is excluded too), the
    upper end the smallest the falling gambler excludes; then the running intersection over those times."""
    bets = plug_in_bets(x, alpha)
    threshold = math.log(1.0 / alpha)
    lower = np.zeros(times.size)
    upper = np.ones(times.size)
    for m in grid:  # one candidate mean per pass: memory stays O(n) whatever the grid
        up, down = _log_capitals(x, bets, float(m))
        up_out = math.log(_THETA) + np.cumsum(up)[times - 1] >= threshold
        down_out = math.log(1.0 - _THETA) + np.cumsum(down)[times - 1] >= threshold
        lower = np.where(up_out, np.maximum(lower, m), lower)
        upper = np.where(down_out, np.minimum(upper, m), upper)
    return np.maximum.accumulate(lower), np.minimum.accumulate(upper)


def mean_cs(x: np.ndarray, alpha: float) -> Interval:
    """The betting CS for the mean of x in [0, 1] at its last observation (estimate = the sample mean); [0, 1]
    with a NaN estimate when x is empty."""
    arr = _check(x, alpha)
    if arr.size == 0:
        return Interval(0.0, 1.0, math.nan, 0, BETTING_METHOD)
    lower, upper = _ends(arr, plug_in_bets(arr, alpha), alpha)
    return Interval(lower, upper, float(arr.mean()), int(arr.size), BETTING_METHOD)


def mean_cs_history(x: np.ndarray, alpha: float, points: int = 200) -> list[tuple[int, float, float, float]]:
    """(n, lower, upper, running mean) at up to `points` sample sizes spread evenly over x, the last one being
    len(x): the betting CS intersected over those sizes (a CS too), each end on a grid of 128 candidate means
    (65 over [0, 1] and 63 around the exact final interval), rounded outward. The last point also takes the
    exact final interval, so it equals :func:`mean_cs` narrowed by the history."""
    arr = _check(x, alpha)
    if arr.size == 0:
        return []
    times = np.unique(np.linspace(1, arr.size, min(points, arr.size)).round().astype(np.int64))
    final = mean_cs(arr, alpha)
    pad = max(final.upper - final.lower, 1e-3)
    fine = np.linspace(max(0.0, final.lower - pad), min(1.0, final.upper + pad), 63)
    grid = np.unique(np.concatenate((np.linspace(0.0, 1.0, 65), fine)))
    lower, upper = _grid_cs(arr, alpha, grid, times)
    lower[-1] = max(lower[-1], final.lower)
    upper[-1] = min(upper[-1], final.upper)
    means = np.cumsum(arr)[times - 1] / times
    rows = zip(times, lower, upper, means, strict=True)
    return [(int(t), float(lo), float(hi), float(mu)) for t, lo, hi, mu in rows]


# --- quantiles -------------------------------------------------------------------------------------------


def _lgamma(z: np.ndarray) -> np.ndarray:
    """log Gamma for positive arrays (numpy has none): shift below 8 up by the recurrence, then Stirling's
    series (error < 1e-13 from 8 on)."""
    z = np.array(z, dtype=np.float64)
    shift = np.zeros_like(z)
    small = z < 8.0
    while np.any(small):
        shift[small] += np.log(z[small])
        z[small] += 1.0
        small = z < 8.0
    inv = 1.0 / z
    inv2 = inv * inv
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 / 1680)))
    return (z - 0.5) * np.log(z) - z + 0.5 * math.log(2 * math.pi) + series - shift


def _log_beta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _lgamma(a) + _lgamma(b) - _lgamma(a + b)


def _beta_binomial_log_mixture(s: np.ndarray, v: np.ndarray, r: float, g: float, h: float) -> np.ndarray:
    """log of the two-sided beta-binomial mixture supermartingale at sum s and intrinsic time v, for increments
    in [-g, h] (Howard et al. 2021; the ``confseq`` package's BetaBinomialMixture with the full beta)."""
    gh = g + h
    return (
        v / (g * h) * math.log(gh)
        - (v + h * s) / (h * gh) * math.log(g)
        - (v - g * s) / (g * gh) * math.log(h)
        + _log_beta((r + v - g * s) / (g * gh), (r + v + h * s) / (h * gh))
        - _log_beta(np.asarray(r / (g * gh)), np.asarray(r / (h * gh)))
    )


def quantile_boundary(t: np.ndarray, p: float, alpha: float, upper: bool) -> np.ndarray:
    """f_t for t = the given sample sizes: the centred Bernoulli(p) sum S_t = sum(1{U_i <= p} - p) stays below
    f_t (upper=True) and above -f_t (upper=False) for every t, both at once, with probability >= 1 - alpha
    (one two-sided mixture). +inf where no finite boundary exists yet (small t)."""
    g, h = (p, 1.0 - p) if upper else (1.0 - p, p)
    log_threshold = math.log(1.0 / alpha)
    v_opt = p * (1.0 - p) * QUANTILE_T_OPT
    rho = v_opt / (2.0 * log_threshold + math.log1p(2.0 * log_threshold))
    r = max(rho - g * h, 1e-3 * g * h)
    v = p * (1.0 - p) * np.asarray(t, dtype=np.float64)
    lo = np.zeros_like(v)
    hi = v / g  # the largest sum S_t can reach
    reachable = _beta_binomial_log_mixture(hi, v, r, g, h) >= log_threshold
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        crossed = _beta_binomial_log_mixture(mid, v, r, g, h) >= log_threshold
        lo = np.where(crossed, lo, mid)
        hi = np.where(crossed, mid, hi)
    return np.where(reachable, hi, np.inf)


def quantile_ranks(t: np.ndarray, p: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks (k_lower, k_upper) of the order statistics that bound the p-quantile at sample sizes t:
    k_lower = floor(t p - f_lower) + 1 (below 1: no lower end yet), k_upper = ceil(t p + f_upper) (above t: no
    upper end yet). Howard & Ramdas (2022), Theorem 1."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        k_lower = np.floor(t * p - quantile_boundary(t, p, alpha, upper=False)) + 1.0
        k_upper = np.ceil(t * p + quantile_boundary(t, p, alpha, upper=True))
    return k_lower, k_upper


def quantile_cs(x: np.ndarray, p: float, alpha: float) -> Interval:
    """The p-quantile's confidence sequence at the last of the i.i.d. observations x (any distribution), with
    the empirical quantile (the order statistic of rank floor(n p) + 1) as estimate. lower is -inf and upper
    +inf while n is too small for that end; both infinite and a NaN estimate when x is empty."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError("observations must be finite")
    n = int(arr.size)
    if n == 0:
        return Interval(-math.inf, math.inf, math.nan, 0, QUANTILE_METHOD)
    k_lower, k_upper = (float(k[0]) for k in quantile_ranks(np.array([n]), p, alpha))
    ranks = [int(k) - 1 for k in (k_lower, k_upper) if 1 <= k <= n]
    values = np.partition(arr, ranks) if ranks else arr
    lower = float(values[int(k_lower) - 1]) if 1 <= k_lower <= n else -math.inf
    upper = float(values[int(k_upper) - 1]) if 1 <= k_upper <= n else math.inf
    return Interval(lower, upper, empirical_quantile(arr, p), n, QUANTILE_METHOD)


def empirical_quantile(x: np.ndarray, p: float) -> float:
    """The order statistic of rank floor(n p) + 1 (the estimate quantile_cs reports); NaN when x is empty."""
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0:
        return math.nan
    rank = min(arr.size - 1, math.floor(arr.size * p))
    return float(np.partition(arr, rank)[rank])
