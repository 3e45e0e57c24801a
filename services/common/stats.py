"""Statistics for evidence, from ``scipy.stats`` (no formula of our own): Wilson score intervals for rates,
McNemar's exact test for paired outcomes, and Holm's step-down correction when one run tests several pairs.

- Wilson 95% interval (Wilson 1927; Agresti & Coull 1998), ``binomtest(...).proportion_ci(method="wilson")``:
  unlike the normal approximation it stays inside [0, 1] and is honest for small n: 3 hits of 3 give
  [0.44, 1.0], so "verified at >= 0.5" needs more images than that.
- McNemar's exact test: of the images on which two classifiers disagree in correctness (b: only A right,
  c: only B right), under "no difference" each discordant image is a fair coin, so the two-sided p-value is
  ``binomtest(b, b + c, 0.5)``. Concordant images carry no information about the difference.
- Holm (1979): with m tests, the i-th smallest p-value is multiplied by (m - i + 1), and the adjusted values
  are made non-decreasing; the family-wise error rate stays at alpha. scipy has no Holm; it is four lines.

scipy is imported with this module (about half a second, once, before a server serves), so no first call
imports it on an event loop; callers on an event loop run the heavier ones through ``asyncio.to_thread``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import binomtest

#: z for a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``hits`` successes in ``n`` trials at the two-sided level of ``z``;
    (0, 1) when n is 0."""
    if n < 0 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n, got {hits}/{n}")
    if n == 0:
        return 0.0, 1.0
    level = math.erf(z / math.sqrt(2))  # two-sided coverage of +-z under the normal
    ci = binomtest(hits, n).proportion_ci(confidence_level=level, method="wilson")
    # Exact at the edges (rounding must not put 1.0 outside the interval of n/n).
    return (0.0 if hits == 0 else max(0.0, float(ci.low))), (1.0 if hits == n else min(1.0, float(ci.high)))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be >= 0")
    if only_a + only_b == 0:
        return 1.0
    return min(1.0, float(binomtest(only_a, only_a + only_b, 0.5).pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given (one test: unchanged)."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p_values[k])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
