"""The SD3.5 variants this service knows, with their model-card defaults (no torch, no gRPC).

The one place that names them: the config checks ``--model VARIANT=DIR`` against :data:`VARIANTS`,
the protobuf enum is mapped in :mod:`services.sd35.convert`, and the request validation reads the
defaults and pixel budgets from :func:`variant_specs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.sd35.config import Sd35Config

#: Variant names, in the order of the ``versus.sd35.v1.Variant`` enum.
VARIANTS = ("large", "large-turbo", "medium")


@dataclass(frozen=True)
class VariantSpec:
    """Defaults and limits of one variant.

    ``skip_layers`` are the model card's skip-layer-guidance layers; the engine uses those its
    transformer has (``Sd35Runner.skip_layers``).
    """

    name: str
    default_steps: int
    default_guidance: float
    min_pixels: int
    max_pixels: int
    skip_layers: tuple[int, ...] = ()

    def fit_side(self, side: int, max_side: int) -> int:
        """The square side nearest ``side`` inside this variant's pixel budget and the transformer's
        ``max_side`` (multiples of 16): the default size a request that leaves the size unset gets."""
        lo = math.ceil(math.sqrt(self.min_pixels) / 16) * 16
        hi = math.isqrt(self.max_pixels) // 16 * 16
        return min(max(side, lo, 16), hi, max_side)


def variant_specs(config: Sd35Config) -> dict[str, VariantSpec]:
    """Defaults from the model cards; pixel budgets from the config."""
    return {
        "large": VariantSpec("large", 28, 3.5, 0, config.max_pixels_large),
        "large-turbo": VariantSpec("large-turbo", 4, 0.0, 0, config.max_pixels_large),
        "medium": VariantSpec("medium", 40, 4.5, config.min_pixels_medium, config.max_pixels_medium, (7, 8, 9)),
    }
