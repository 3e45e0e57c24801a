"""Errors of the ViT service (subclasses of the shared domain errors; no gRPC here)."""

from __future__ import annotations

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelLoadError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)


class InvalidImage(InvalidArgument):
    """An image could not be decoded or breaks a limit; ``field`` names it (``images[3]``)."""


class PickleCheckpointRefused(ModelLoadError):
    """The model directory holds only pickle weights, which can execute code when loaded."""


class HeadNotFound(NotFound):
    """No custom head with that name."""


class NoClassifier(FailedPrecondition):
    """The loaded checkpoint has no classification head."""


class TritonUnavailable(Unavailable):
    """Triton Inference Server cannot serve now (down, unreachable, model not ready, or it failed the call)."""


class TritonBusy(ResourceExhausted):
    """Triton's queue for the model is full; retry after ``retry_after_s``."""


class TritonRejected(InvalidArgument):
    """Triton refused the batch the service sent (its model configuration does not fit the request)."""
