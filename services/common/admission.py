"""Admission control shared by the services (no gRPC): decide *before* the expensive work.

:class:`Admission` counts work units (images, generations) that were admitted and have not finished;
a request that does not fit is refused at once with :class:`QueueFull` (RESOURCE_EXHAUSTED with a
``RetryInfo`` hint), before any decoding or model work is spent on it. :class:`ServiceTime` keeps the
running estimate behind the retry hint: units ahead × recent seconds per unit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from services.common.errors import ResourceExhausted
from services.common.metrics import Metrics


class QueueFull(ResourceExhausted):
    """The service's bounded queue has no room; retry after ``retry_after_s``."""

    reason = "QUEUE_FULL"


class ServiceTime:
    """Exponentially weighted estimate of seconds per unit of work, for retry hints."""

    def __init__(self, initial_s: float, alpha: float = 0.2) -> None:
        self.per_unit_s = initial_s
        self._alpha = alpha

    def observe(self, seconds: float, units: int = 1) -> None:
        """Record that ``units`` took ``seconds`` of service in total."""
        if units > 0 and seconds >= 0:
            self.per_unit_s += self._alpha * (seconds / units - self.per_unit_s)

    def retry_after(self, units_ahead: int, workers: int = 1) -> float:
        """Seconds until ``units_ahead`` units have drained through ``workers`` parallel servers."""
        return max(0.01, self.per_unit_s * units_ahead / max(1, workers))


class Admission:
    """A bounded number of admitted, unfinished work units.

    ``hold(n)`` admits ``n`` units or raises :class:`QueueFull` at once (microseconds, no waiting);
    the units are released when the ``with`` block ends, however it ends. The retry hint is the time
    the units in flight need to drain at the rate units have recently been finishing (measured here,
    between releases while busy), so it covers decoding and queueing as well as compute.
    """

    def __init__(self, capacity: int, *, model: str, service_time: ServiceTime | None = None, workers: int = 1,
                 metrics: Metrics | None = None, what: str = "items") -> None:
        self.capacity = capacity
        self.in_use = 0
        self.service_time = service_time or ServiceTime(initial_s=0.05)
        self._last_release: float | None = None
        self._model = model
        self._workers = workers
        self._metrics = metrics
        self._what = what

    def acquire(self, units: int) -> None:
        """Admit ``units`` or raise QueueFull with a retry hint."""
        if self.in_use + units > self.capacity:
            if self._metrics:
                self._metrics.rejected.labels(self._model, "queue_full").inc(units)
            retry = self.service_time.retry_after(self.in_use, self._workers)
            raise QueueFull(f"server busy: {self.in_use}/{self.capacity} {self._what} admitted; "
                            f"retry after {retry:.2f}s", retry_after_s=retry)
        self.in_use += units
        self._publish()

    def release(self, units: int) -> None:
        now = time.monotonic()
        if self._last_release is not None and self.in_use > units:  # busy since the last release
            self.service_time.observe(now - self._last_release, units)
        self._last_release = now
        self.in_use = max(0, self.in_use - units)
        self._publish()

    def _publish(self) -> None:
        if self._metrics:
            self._metrics.work_in_flight.labels(self._model).set(self.in_use)

    @contextlib.contextmanager
    def hold(self, units: int) -> Iterator[None]:
        self.acquire(units)
        try:
            yield
        finally:
            self.release(units)
