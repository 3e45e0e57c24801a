"""Typed service configuration read from the environment and command-line flags.

A service declares one frozen dataclass that subclasses :class:`ServerConfig`. Every field is
settable as ``<PREFIX>_<FIELD>`` in the environment and ``--field-name`` on the command line; flags
win over the environment, which wins over the defaults. Nothing is read at import time: call
:meth:`ServerConfig.from_env` or :meth:`ServerConfig.from_args`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from services.common.errors import ConfigError

C = TypeVar("C", bound="ServerConfig")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


log = logging.getLogger(__name__)


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, flag: str = "",
            separator: str = ",", deprecated: tuple[str, ...] = ()) -> Any:
    """Declare a config field with its help text (shown by ``--help`` and the docs).

    ``flag`` overrides the flag name; tuple fields are ``separator``-separated in the environment (a comma
    unless the values hold commas themselves) and repeatable on the command line (``--model a=1 --model b=2``).
    ``deprecated`` lists old field names whose flag and environment variable still work for one release,
    with a warning naming the new spelling.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "flag": flag,
                                                        "separator": separator, "deprecated": deprecated})


class DeprecatedFlag(argparse.Action):
    """An old flag spelling: stores into the new destination and says what to type instead."""

    def __init__(self, *args: Any, new_flag: str = "", **kwargs: Any) -> None:
        self.new_flag = new_flag
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        log.warning("%s is deprecated and will be removed in the next release; use %s", option_string, self.new_flag)
        setattr(namespace, self.dest, values)


def _parse(raw: str, kind: Any, name: str, separator: str = ",") -> Any:
    """Convert one raw string (env or flag) into the field's declared type."""
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind == tuple[str, ...]:
            return tuple(part.strip() for part in raw.split(separator) if part.strip())
        return raw
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot parse {raw!r}: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings every gRPC service shares. Subclasses add their own and set ``ENV_PREFIX``."""

    ENV_PREFIX: ClassVar[str] = "VERSUS"

    host: str = setting("[::]", "Address to bind the gRPC server to.")
    port: int = setting(50050, "gRPC port; 0 picks a free port.")
    metrics_port: int = setting(9100, "Prometheus /metrics HTTP port; 0 picks a free port, -1 disables.")
    metrics_host: str = setting("0.0.0.0", "Address to bind the metrics HTTP server to.")
    grace_s: float = setting(20.0, "On SIGTERM, seconds in-flight RPCs get to finish before cancel.")
    drain_delay_s: float = setting(
        2.0, "On SIGTERM, seconds to keep serving while health says NOT_SERVING (lets load balancers drain)."
    )
    max_message_bytes: int = setting(64 * 1024 * 1024, "Largest request or response message, in bytes.")
    max_concurrent_rpcs: int = setting(1024, "RPCs handled at once; beyond it the server answers RESOURCE_EXHAUSTED.")
    keepalive_time_s: float = setting(30.0, "Seconds between server keepalive pings.")
    keepalive_timeout_s: float = setting(10.0, "Seconds to wait for a keepalive ack before closing.")
    max_connection_age_s: float = setting(300.0, "Close connections after this age so clients rebalance; 0 = never.")
    max_connection_age_grace_s: float = setting(30.0, "Grace for RPCs on an aged connection.")
    tls_cert: str = setting("", "PEM server certificate chain; enables TLS.")
    tls_key: str = setting("", "PEM private key for tls_cert.")
    tls_client_ca: str = setting("", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS).")
    token: str = setting("", "Bearer token required in 'authorization' metadata; empty disables auth.")
    token_file: str = setting("", "File holding the bearer token (e.g. a mounted Kubernetes Secret).")
    reflection: bool = setting(True, "Serve gRPC server reflection.")
    log_level: str = setting("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = setting("json", "Log format.", choices=("json", "text"))
    port_file: str = setting("", "Once serving, write the bound ports as JSON here (for scripts using port 0).")

    def __post_init__(self) -> None:
        self._check_choices()
        for name in ("port", "max_message_bytes", "max_concurrent_rpcs"):
            if getattr(self, name) < (0 if name == "port" else 1):
                raise ConfigError(f"{self.label(name)} must be positive, got {getattr(self, name)}")
        if not -1 <= self.metrics_port <= 65535 or self.port > 65535:
            raise ConfigError(f"{self.label('metrics_port')}: ports are 0..65535 (-1 disables metrics)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(f"{self.label('tls_cert')} and {self.label('tls_key')} must be set together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError(f"{self.label('tls_client_ca')} (mTLS) needs {self.label('tls_cert')}")
        if self.token and self.token_file:
            raise ConfigError(f"set {self.label('token')} or {self.label('token_file')}, not both")
        for name in ("grace_s", "drain_delay_s", "keepalive_time_s", "max_connection_age_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.label(name)} must be >= 0")

    def _check_choices(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{self.label(f.name)}: {getattr(self, f.name)!r} is not one of {choices}")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable for one field, e.g. ``VIT_MAX_BATCH_SIZE``."""
        return f"{cls.ENV_PREFIX}_{field_name.upper()}"

    @classmethod
    def _types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_env(cls: type[C], environ: Mapping[str, str] | None = None, **overrides: Any) -> C:
        """Build from ``environ`` (default: ``os.environ``); keyword overrides win."""
        environ = os.environ if environ is None else environ
        types = cls._types()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env = cls.env_name(f.name)
            if env not in environ:
                env = next((old for old in map(cls.env_name, f.metadata.get("deprecated", ())) if old in environ), env)
                if env in environ:
                    log.warning("%s is deprecated and will be removed in the next release; use %s", env,
                                cls.env_name(f.name))
            if env in environ:
                values[f.name] = _parse(environ[env], types[f.name], cls.label(f.name),
                                        f.metadata.get("separator", ","))
        values.update(overrides)
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per field (default None, so unset flags fall back to the env)."""
        types = cls._types()
        group = parser.add_argument_group(f"{cls.__name__} (env {cls.ENV_PREFIX}_*)")
        for f in dataclasses.fields(cls):
            flag = cls.flag_name(f)
            kind = types[f.name]
            # argparse %-formats help text: a literal '%' ("95% intervals") must be doubled, here, once.
            help_text = f"{f.metadata.get('help', '')} [env {cls.env_name(f.name)}; default {f.default!r}]"
            help_text = help_text.replace("%", "%%")
            for old in f.metadata.get("deprecated", ()):
                group.add_argument("--" + old.replace("_", "-"), dest=f.name, default=None, action=DeprecatedFlag,
                                   new_flag=flag, help=argparse.SUPPRESS)
            if kind is bool:
                group.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                   help=help_text)
            elif kind == tuple[str, ...]:
                group.add_argument(
                    flag,
                    dest=f.name,
                    default=None,
                    action="append",
                    metavar=f.name.upper(),
                    help=help_text + " (repeatable)",
                )
            elif f.metadata.get("choices"):
                group.add_argument(flag, dest=f.name, default=None, choices=f.metadata["choices"], help=help_text)
            else:
                group.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)

    @classmethod
    def label(cls, field_name: str) -> str:
        """How errors name a setting: the flag the user may have typed and its environment variable."""
        f = next(f for f in dataclasses.fields(cls) if f.name == field_name)
        return f"{cls.flag_name(f)} ({cls.env_name(field_name)})"

    @classmethod
    def flag_name(cls, f: dataclasses.Field) -> str:
        """The command-line flag of one field."""
        return "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))

    @classmethod
    def from_args(cls: type[C], args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> C:
        """Environment first, then every flag the user actually gave."""
        types = cls._types()
        overrides = {}
        for f in dataclasses.fields(cls):
            raw = getattr(args, f.name, None)
            if raw is None:
                continue
            separator = f.metadata.get("separator", ",")
            if isinstance(raw, list):
                raw = separator.join(raw)
            overrides[f.name] = raw if isinstance(raw, bool) else _parse(str(raw), types[f.name], cls.label(f.name),
                                                                         separator)
        return cls.from_env(environ, **overrides)

    def resolved_token(self) -> str:
        """The bearer token from ``token`` or ``token_file`` (read when the server is built)."""
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as fh:
                    return fh.read().strip()
            except OSError as exc:
                raise ConfigError(f"{self.label('token_file')}: {exc}") from exc
        return self.token

    def describe(self) -> dict[str, Any]:
        """Settings as a dict for logs, with secrets masked."""
        out = dataclasses.asdict(self)
        if out.get("token"):
            out["token"] = "***"
        return out


@dataclasses.dataclass(frozen=True)
class OipServerConfig(ServerConfig):
    """Settings of a service that also serves the Open Inference Protocol (vit, sd35)."""

    http_port: int = setting(
        -1, "Port of the Open Inference Protocol over HTTP/REST (/v2/...; KServe's default protocol); 0 picks a "
        "free port, -1 (the default) serves it over gRPC only.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not -1 <= self.http_port <= 65535:
            raise ConfigError(f"{self.label('http_port')}: ports are 0..65535 (-1 disables)")
