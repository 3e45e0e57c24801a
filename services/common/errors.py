"""Domain exceptions shared by every service. No gRPC here: the status mapping is in ``status.py``.

Each service's own ``errors`` module subclasses these; the mapping walks the class hierarchy, so a
subclass inherits its parent's status code unless the table names it.
"""

from __future__ import annotations


class VersusError(Exception):
    """Base of every error a client may see. ``message`` is safe to send to the caller."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: For overload errors: how long the client should back off before retrying.
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message


class ConfigError(VersusError):
    """A setting is missing or invalid (raised at start-up, before serving)."""


class InvalidArgument(VersusError):
    """The request is malformed; retrying it unchanged will fail again."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(VersusError):
    """A named model, head, adapter or entry does not exist."""


class AlreadyExists(VersusError):
    """A name is already taken."""


class FailedPrecondition(VersusError):
    """The request is valid but the served model cannot do it (e.g. classify with no classifier)."""


class ResourceExhausted(VersusError):
    """A queue or limit is full; retry after ``retry_after_s``."""


class Unavailable(VersusError):
    """The service is loading, draining or stopped."""


class DeadlineExceeded(VersusError):
    """The caller's deadline passed before the work could finish."""


class Cancelled(VersusError):
    """The caller went away."""


class Unauthenticated(VersusError):
    """Missing or wrong credentials."""


class ModelLoadError(VersusError):
    """Weights could not be loaded (bad path, pickle checkpoint, incompatible config)."""


class InternalError(VersusError):
    """A bug or an unexpected failure; the message stays generic."""
