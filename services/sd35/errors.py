"""Errors of the SD3.5 service (subclasses of the shared domain errors; no gRPC here).

Each class's ``reason`` (``google.rpc.ErrorInfo.reason``) is its name in UPPER_SNAKE, e.g.
``ADAPTER_NOT_FOUND``; docs/SD35.md lists them.
"""

from __future__ import annotations

from services.common.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)


class VariantNotHosted(NotFound):
    """The requested variant is not served by this process."""


class AdapterNotFound(NotFound):
    """No adapter with that name is loaded (or no such file under the adapter root)."""


class AdapterAlreadyLoaded(AlreadyExists):
    """An adapter of that name is loaded (or being loaded) for the variant."""


class TooManyAdapters(ResourceExhausted):
    """The variant holds ``--max-adapters`` adapters; unload one first (waiting will not help)."""


class AdapterLoadingDisabled(FailedPrecondition):
    """The service was started without ``--adapter-root``."""


class BadAdapterPath(InvalidArgument):
    """An adapter path that is absolute, climbs with '..', leaves the root, is too long, or is not a
    ``.safetensors`` file name."""


class InvalidAdapter(InvalidArgument):
    """The file is not a LoRA this variant can load: not safetensors (random bytes, empty, truncated),
    no LoRA tensors, or tensors that do not fit the model."""


class GenerationCancelled(Cancelled):
    """The caller cancelled; the denoising loop stopped at the next step."""


class GenerationDeadline(DeadlineExceeded):
    """The caller's deadline passed; the denoising loop stopped at the next step."""
