"""Small statistics the evidence needs (no numpy: the gateway stays light)."""

from __future__ import annotations

import math

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when nothing was observed.

    Chosen over the normal (Wald) interval because it stays inside [0, 1] and is honest at the small
    counts a comparison can afford: 3/3 gives (0.44, 1), 8/8 gives (0.68, 1)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def images_to_verify(bar: float, z: float = Z95) -> int:
    """The fewest images whose perfect score (n/n) has a Wilson lower bound at or above ``bar``."""
    n = 1
    while wilson(n, n, z)[0] < bar:
        n += 1
    return n
