"""Domain exceptions shared by every service. No gRPC here: the status mapping is in ``status.py``.

Each service's own ``errors`` module subclasses these; the mapping walks the class hierarchy, so a
subclass inherits its parent's status code unless the table names it.

Every error carries what a *program* needs to act on it, besides the sentence for people:

- ``reason``: a stable UPPER_SNAKE identifier (``google.rpc.ErrorInfo.reason``, domain ``versus``);
  a class attribute, so each subclass names its own (``INVALID_IMAGE``, ``QUEUE_FULL`` …).
- ``violations``: ``(field path, what is wrong)`` pairs (``google.rpc.BadRequest``) for bad input.
- ``retry_after_s``: when to retry (``google.rpc.RetryInfo``) for overload.
- ``resource_type`` / ``resource_name``: what was not found (``google.rpc.ResourceInfo``).
- ``metadata``: extra string facts for ``ErrorInfo.metadata``.

Client input quoted in a message goes through :func:`quote`, which bounds it: a 20,000-character id
must not turn into a status message larger than the transport's metadata limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

#: The ErrorInfo domain of every Versus error.
DOMAIN = "versus"
#: Characters of client input an error message may quote.
QUOTE_LIMIT = 64
#: Hard cap on a status message (the HTTP/2 trailer budget is 8 KiB for everything).
MESSAGE_LIMIT = 1024


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of client input, shortened to about ``limit`` characters with the full length noted."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}…' ({size} characters)"


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def _bounded(message: str) -> str:
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 1] + "…"


class VersusError(Exception):
    """Base of every error a client may see. ``message`` is safe to send to the caller."""

    #: Stable machine-readable reason (ErrorInfo.reason); defaults to the class name in UPPER_SNAKE.
    reason: ClassVar[str] = "VERSUS_ERROR"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "reason" not in cls.__dict__:
            cls.reason = _snake(cls.__name__)

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.message = message
        #: For overload errors: how long the client should back off before retrying.
        self.retry_after_s = retry_after_s
        self.metadata: dict[str, str] = {k: _bounded(str(v)) for k, v in (metadata or {}).items()}
        #: (field path, problem) pairs for bad input.
        self.violations: tuple[tuple[str, str], ...] = ()
        self.resource_type = ""
        self.resource_name = ""

    def __str__(self) -> str:
        return self.message


class ConfigError(VersusError):
    """A setting is missing or invalid (raised at start-up, before serving)."""


class InvalidArgument(VersusError):
    """The request is malformed; retrying it unchanged will fail again.

    ``field`` is the path of the offending field as the client wrote it (``images[1].data``).
    Several problems at once: pass ``more=[(field, problem), ...]``.
    """

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str, *, more: Sequence[tuple[str, str]] = (),
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{field}: {problem}", metadata=metadata)
        self.field = field
        self.problem = problem
        self.violations = ((field, _bounded(problem)), *((f, _bounded(p)) for f, p in more))


class NotFound(VersusError):
    """A named model, head, adapter or entry does not exist.

    ``resource_type`` says what kind (``model``, ``head``, ``adapter``, ``variant``);
    ``resource_name`` the (bounded) name the client asked for.
    """

    reason = "NOT_FOUND"

    def __init__(self, message: str, *, resource_type: str = "", resource_name: str = "",
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata)
        self.resource_type = resource_type
        self.resource_name = resource_name[:QUOTE_LIMIT]


class AlreadyExists(VersusError):
    """A name is already taken."""

    reason = "ALREADY_EXISTS"


class FailedPrecondition(VersusError):
    """The request is valid but the served model cannot do it (e.g. classify with no classifier)."""

    reason = "FAILED_PRECONDITION"


class ResourceExhausted(VersusError):
    """A queue or limit is full; retry after ``retry_after_s`` (None: retrying soon will not help)."""

    reason = "RESOURCE_EXHAUSTED"


class Unavailable(VersusError):
    """The service is loading, draining or stopped."""

    reason = "UNAVAILABLE"


class DeadlineExceeded(VersusError):
    """The caller's deadline passed before the work could finish."""

    reason = "DEADLINE_EXCEEDED"


class Cancelled(VersusError):
    """The caller went away."""

    reason = "CANCELLED"


class Unauthenticated(VersusError):
    """Missing or wrong credentials."""

    reason = "UNAUTHENTICATED"


class Unimplemented(VersusError):
    """The server does not offer this operation (an RPC of a protocol it serves only in part)."""

    reason = "UNIMPLEMENTED"


class ModelLoadError(VersusError):
    """Weights could not be loaded (bad path, pickle checkpoint, incompatible config)."""


class InternalError(VersusError):
    """A bug or an unexpected failure; the message stays generic."""

    reason = "INTERNAL"
