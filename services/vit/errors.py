"""Errors of the ViT service (subclasses of the shared domain errors; no gRPC here)."""

from __future__ import annotations

from services.common.errors import FailedPrecondition, InvalidArgument, ModelLoadError, NotFound


class InvalidImage(InvalidArgument):
    """An image could not be decoded or breaks a limit; ``field`` names it (``images[3]``)."""


class PickleCheckpointRefused(ModelLoadError):
    """The model directory holds only pickle weights, which can execute code when loaded."""


class HeadNotFound(NotFound):
    """No custom head with that name."""


class NoClassifier(FailedPrecondition):
    """The loaded checkpoint has no classification head."""
