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
