"""The ONE place that turns domain exceptions into gRPC statuses with ``google.rpc`` details.

A client reads the details with ``grpc_status.rpc_status.from_call(err)`` (see
:mod:`services.common.client` for a reader): ``ErrorInfo`` (reason, domain ``versus``) on every
error, ``BadRequest`` field violations for INVALID_ARGUMENT, ``RetryInfo`` for RESOURCE_EXHAUSTED and
``ResourceInfo`` for NOT_FOUND.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import errors

STATUS_BY_ERROR: dict[type[errors.VersusError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ModelLoadError: grpc.StatusCode.UNAVAILABLE,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}

#: Message sent for exceptions that are not VersusError (details stay in the server log).
GENERIC_INTERNAL_MESSAGE = "internal error"


def status_for(exc: BaseException) -> grpc.StatusCode:
    """Status code for ``exc``: the nearest class in its MRO that the table names, else INTERNAL."""
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def details_for(exc: errors.VersusError) -> list[any_pb2.Any]:
    """The ``google.rpc`` detail messages that ``exc`` carries."""
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=errors.DOMAIN, metadata=exc.metadata)
    details = [_pack(info)]
    if exc.violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in exc.violations])))
    if exc.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, int(exc.retry_after_s * 1000)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    if exc.resource_type or exc.resource_name:
        details.append(_pack(error_details_pb2.ResourceInfo(
            resource_type=exc.resource_type, resource_name=exc.resource_name, description=exc.message)))
    return details


def to_status(exc: BaseException, request_id: str) -> grpc.Status:
    """A ``grpc.Status`` (code, message, ``grpc-status-details-bin`` trailer) for ``exc``."""
    code = status_for(exc)
    if isinstance(exc, errors.VersusError):
        message, details = exc.message, details_for(exc)
    else:
        message = f"{GENERIC_INTERNAL_MESSAGE} (request id {request_id})"
        details = [_pack(error_details_pb2.ErrorInfo(reason=errors.InternalError.reason, domain=errors.DOMAIN,
                                                     metadata={"request_id": request_id}))]
    proto = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return rpc_status.to_status(proto)
