"""Errors of the SD3.5 service (subclasses of the shared domain errors; no gRPC here)."""

from __future__ import annotations

from services.common.errors import Cancelled, DeadlineExceeded, InvalidArgument, NotFound


class VariantNotHosted(NotFound):
    """The requested variant is not served by this process."""


class AdapterNotFound(NotFound):
    """No adapter with that name (or no such file under the adapter root)."""


class BadAdapterPath(InvalidArgument):
    """An adapter path that is absolute, climbs with '..', leaves the root or is not safetensors."""


class GenerationCancelled(Cancelled):
    """The caller cancelled; the denoising loop stopped at the next step."""


class GenerationDeadline(DeadlineExceeded):
    """The caller's deadline passed; the denoising loop stopped at the next step."""
