"""How many images a perfect generator needs for its hit rate to verify (the interval itself is
:func:`services.common.stats.wilson`, shared with the eval runs)."""

from __future__ import annotations

from services.common.stats import Z95, wilson


def images_to_verify(bar: float, z: float = Z95) -> int:
    """The fewest images whose perfect score (n/n) has a Wilson lower bound at or above ``bar``."""
    n = 1
    while wilson(n, n, z)[0] < bar:
        n += 1
    return n
