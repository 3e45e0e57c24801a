"""One declared check: its id, the claim it tests, the conditions its measurement holds under, its probe
and its judgement — one object, so the runner iterates the table and nothing types an id twice.

The probe plans :class:`Job` s for one served model (usually one; the precision check one per other
deployment); the runner (:mod:`services.gateway.compare.checks`) runs them through the cache and keeps
each result beside its check. The judgement turns a result's ``data`` into a
:class:`~services.gateway.compare.verdicts.Verdict`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.gateway.compare.verdicts import Decider, Verdict

if TYPE_CHECKING:
    from services.gateway.compare.probes import ProbeResult
    from services.gateway.compare.run import Run, Served


@dataclass(frozen=True)
class Job:
    """One probe run of a check on one served model, cached per (component, weights digest, ``key``)."""

    key: str = ""  # "" = the check's id
    run: Callable[[], Awaitable[ProbeResult]] | None = None
    result: ProbeResult | None = None  # known without a call (e.g. nothing to compare with)


Plan = Callable[["Run", "Served"], list[Job]]


@dataclass(frozen=True, eq=False)
class Check:
    id: str
    service: str  # the family whose deployments it probes: "vit" or "sd35"
    capabilities: tuple[str, ...]  # () = a row of its own, under the check's id and ``title``
    claim: str  # what the check itself tests (the live row's claim)
    conditions: str  # what its measurement holds under
    observes: str
    fails: str  # the lies it catches
    misses: str  # what it does not prove (shown under its mark: "does not prove: …")
    judge: Callable[[dict[str, Any]], Verdict]
    plan: Plan | None = None  # None: another stage observes it (quality)
    applies: Callable[[Served], bool] = lambda _served: True
    weights_dependent: bool = False  # only real or operator-attested weights decide it
    decides: Mapping[str, Decider] = field(default_factory=dict)  # catalog claim metric → decider
    title: str = ""  # the title of its own row (checks without capabilities)

    @property
    def rows(self) -> tuple[str, ...]:
        """The capability rows it speaks for (its own id when it has a row of its own)."""
        return self.capabilities or (self.id,)
