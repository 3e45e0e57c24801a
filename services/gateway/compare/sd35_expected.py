"""What the catalog claims of an SD3.5 model, as the figures its live checks expect: the default step count
and the output sizes. They come from the catalog entry whose claim is checked (ranker.ListModels), never
from the service under test; a figure the catalog lacks is ``None``/empty, and the check that needs it
is then UNDECIDED ("no published figure to check against").
"""

from __future__ import annotations

from dataclasses import dataclass

from versus.ranker.v1 import ranker_pb2

#: Claim metrics (catalog ``claims[].metric``) the SD3.5 checks read.
DEFAULT_STEPS = "default_steps"  # steps the model runs when a request leaves them unset
IMAGE_SIDE = "image_side_px"  # a square output side the model claims to generate (1024 for "1 megapixel")
#: Side of behaviour probes when neither GATEWAY_PROBE_SIZE nor the catalog names one (a gateway choice).
FALLBACK_SIDE = 512


@dataclass(frozen=True)
class Expected:
    """The catalog's figures for one SD3.5 model (empty when the model has no entry)."""

    default_steps: int | None = None
    sides: tuple[int, ...] = ()  # claimed square sides, as the catalog states them

    @classmethod
    def of(cls, entry: ranker_pb2.CatalogEntry | None) -> Expected:
        if entry is None:
            return cls()
        steps = [int(c.value) for c in entry.claims if c.metric == DEFAULT_STEPS and c.HasField("value")]
        sides = [int(c.value) for c in entry.claims if c.metric == IMAGE_SIDE and c.HasField("value")]
        return cls(steps[0] if steps else None, tuple(dict.fromkeys(sides)))

    def probe_side(self, configured: int) -> int:
        """The side behaviour probes generate at: the operator's GATEWAY_PROBE_SIZE, else the catalog's claimed
        size, else FALLBACK_SIDE (never the service's advertised default)."""
        return configured or (self.sides[0] if self.sides else FALLBACK_SIDE)
