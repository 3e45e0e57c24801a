"""Client-side helpers shared by the CLI, the demo and the tests: channels with TLS/token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class ClientSettings:
    """How to reach a Versus service."""

    target: str
    token: str = ""
    tls_ca: str = ""  # PEM root for the server certificate; enables TLS
    tls_cert: str = ""  # client certificate for mTLS
    tls_key: str = ""
    server_name: str = ""  # override the TLS name check (e.g. "localhost")
    max_message_bytes: int = 64 * 1024 * 1024

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata (the bearer token, when set)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def options(self) -> list[tuple[str, object]]:
        opts: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return opts

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls_ca:
            return None
        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.tls_ca), read(self.tls_key), read(self.tls_cert))

    def channel(self) -> grpc.Channel:
        """A blocking channel."""
        creds = self.credentials()
        if creds is None:
            return grpc.insecure_channel(self.target, options=self.options())
        return grpc.secure_channel(self.target, creds, options=self.options())


@dataclass(frozen=True)
class ErrorDetails:
    """What a failed call's ``google.rpc.Status`` details say, for programs that act on errors."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] | None = None
    violations: tuple[tuple[str, str], ...] = ()
    retry_after_s: float | None = None
    resource_type: str = ""
    resource_name: str = ""

    def describe(self) -> str:
        """One line for people: ``CODE: message`` plus the field violations when several."""
        text = f"{self.code.name}: {self.message}"
        extra = [f"{f}: {d}" for f, d in self.violations[1:]]
        if self.retry_after_s is not None:
            extra.append(f"retry after {self.retry_after_s:.3g} s")
        return text + (f" ({'; '.join(extra)})" if extra else "")


def error_details(err: grpc.RpcError) -> ErrorDetails:
    """Read the structured details of a failed call (any of them may be absent)."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except (ValueError, AttributeError):  # a status whose code/message disagree with the trailer
        status = None
    fields: dict[str, object] = {}
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            fields.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields["violations"] = tuple((v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            fields["retry_after_s"] = retry.retry_delay.ToMilliseconds() / 1000
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            res = error_details_pb2.ResourceInfo()
            detail.Unpack(res)
            fields.update(resource_type=res.resource_type, resource_name=res.resource_name)
    return ErrorDetails(code, message or "", **fields)  # type: ignore[arg-type]
