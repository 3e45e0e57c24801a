"""Errors of the ranker service (subclasses of the shared domain errors; no gRPC here)."""

from __future__ import annotations

from services.common.errors import AlreadyExists, ConfigError, NotFound


class CatalogError(ConfigError):
    """A catalog file breaks the schema; the message names the file and the field."""


class UnknownModel(NotFound):
    """The model id is not in the catalog."""


class IdempotencyConflict(AlreadyExists):
    """An idempotency key was reused for a different match."""


class DeploymentConflict(AlreadyExists):
    """A deployment id is a catalog id, or is registered with another identity."""
