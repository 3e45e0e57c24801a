"""Small, exact statistics for evidence: Wilson score intervals for rates and McNemar's exact test for
paired outcomes. Pure Python (no numpy, no scipy), so every service and tool can use them.

- Wilson 95% interval (Wilson 1927; Agresti & Coull 1998): unlike the normal approximation it stays
  inside [0, 1] and is honest for small n: 3 hits of 3 give [0.44, 1.0], so "verified at >= 0.5" needs
  more images than that.
- McNemar's exact test: of the images on which two classifiers disagree in correctness (b: only A right,
  c: only B right), under "no difference" each discordant image is a fair coin. The two-sided p-value is
  min(1, 2 * P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2). Concordant images carry no information about
  the difference and are not part of the test.
"""

from __future__ import annotations

import math

#: z for a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``hits`` successes in ``n`` trials; (0, 1) when n is 0."""
    if n < 0 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n, got {hits}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Exact at the edges (rounding must not put 1.0 outside the interval of n/n).
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return low, high


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, then one division)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be >= 0")
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_cdf_half(min(only_a, only_b), n))
