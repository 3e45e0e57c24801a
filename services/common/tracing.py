"""OpenTelemetry tracing, configured by the standard ``OTEL_*`` variables only, and off by default.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set,
``OTEL_SDK_DISABLED`` is not ``true`` and ``OTEL_TRACES_EXPORTER`` is not ``none``. The SDK reads the
rest itself: the sampler (``OTEL_TRACES_SAMPLER[_ARG]``), the service name (``OTEL_SERVICE_NAME``,
else ``versus-<service>``), the exporter's headers, TLS and timeouts, the batch processor's delays.

Nothing happens at import time and nothing is installed globally: :func:`acquire` (called by the
server bootstrap) builds one tracer provider per process with the OTLP/gRPC exporter, and every
helper here is a no-op costing one global read while it is off. The gRPC server interceptor makes a
span per RPC (continuing the caller's W3C ``traceparent``) except for the open probe RPCs (health
checks, reflection, the Open Inference Protocol's liveness/readiness); the client interceptors propagate the context
on the gateway's downstream calls.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
INSTRUMENTATION = "versus"

#: Captured caller context (see :func:`capture`): the OpenTelemetry context to parent spans on.
Captured = otel_context.Context
Span = trace.Span


@dataclass(frozen=True)
class TracingSettings:
    """Whether tracing is on, decided from the standard variables; ``why`` says which one decided."""

    enabled: bool
    why: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TracingSettings:
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls(False, "OTEL_SDK_DISABLED=true")
        if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
            return cls(False, "OTEL_TRACES_EXPORTER=none")
        endpoint = next((name for name in ENDPOINT_VARIABLES if environ.get(name, "").strip()), "")
        if not endpoint:
            return cls(False, "no OTLP endpoint set")
        return cls(True, f"{endpoint}={environ[endpoint].strip()}")


class Tracing:
    """The process's tracer provider (OTLP/gRPC exporter behind a batch processor)."""

    def __init__(self, service_name: str) -> None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: service_name}))
        self.service_name = str(resource.attributes[SERVICE_NAME])
        # shutdown_on_exit=False: the server shuts it down after draining (see release()).
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer(INSTRUMENTATION)
        self.users = 0

    def server_interceptor(self, untraced: Callable[[str], bool]) -> Any:
        """A span per RPC (SERVER kind, the caller's context continued), except those ``untraced(method)``
        (health checks, reflection, liveness probes: polled every few seconds, they would drown the traces)."""
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        return aio_server_interceptor(tracer_provider=self.provider,
                                      filter_=lambda details: not untraced(details.method or ""))

    def client_interceptors(self) -> list[Any]:
        """A CLIENT span per outgoing call, carrying ``traceparent`` in its metadata."""
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return aio_client_interceptors(tracer_provider=self.provider)

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter thread."""
        self.provider.shutdown()


_active: Tracing | None = None
_lock = threading.Lock()


def acquire(service_name: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """The process's tracing (created on first use, shared by the servers of one process), or None
    when the variables leave it off. Pair with :func:`release`."""
    global _active
    if not TracingSettings.from_env(os.environ if environ is None else environ).enabled:
        return None
    with _lock:
        if _active is None:
            _active = Tracing(service_name)
        _active.users += 1
        return _active


def release(tracing: Tracing | None) -> None:
    """Drop one user; the last one flushes and shuts the provider down."""
    global _active
    if tracing is None:
        return
    with _lock:
        tracing.users -= 1
        if tracing.users > 0:
            return
        if _active is tracing:
            _active = None
    tracing.shutdown()


def enabled() -> bool:
    return _active is not None


def client_interceptors() -> list[Any] | None:
    """Interceptors for a client channel (None when tracing is off: no per-call cost)."""
    return _active.client_interceptors() if _active is not None else None


# -- spans for the expensive parts (no-ops while tracing is off) ------------------------------------
def capture() -> Captured | None:
    """The caller's context, for work that another task or thread does on its behalf."""
    return otel_context.get_current() if _active is not None else None


_OFF = contextlib.nullcontext(None)


def span(name: str, parent: Captured | None = None, links: Sequence[Captured | None] = (),
         **attributes: Any) -> contextlib.AbstractContextManager[Span | None]:
    """A span that is current inside the block: a child of ``parent`` when given (work on another
    thread or task), else of the current span, linked to the spans current in ``links``. Yields None
    while tracing is off (a shared null context: no allocation) or outside a trace."""
    tracing = _active
    if tracing is None or not _traced(parent):
        return _OFF
    return _span(tracing, name, parent, links, attributes)


@contextlib.contextmanager
def _span(tracing: Tracing, name: str, parent: Captured | None, links: Sequence[Captured | None],
          attributes: dict[str, Any]) -> Iterator[Span | None]:
    seen = {_span_context(parent).span_id}
    related = []
    for ctx in links:
        other = _span_context(ctx) if ctx is not None else trace.INVALID_SPAN_CONTEXT
        if other.is_valid and other.span_id not in seen:
            seen.add(other.span_id)
            related.append(trace.Link(other))
    with tracing.tracer.start_as_current_span(name, context=parent, links=related, attributes=attributes) as current:
        yield current


def record(name: str, start_ns: int, end_ns: int, parent: Captured | None = None, **attributes: Any) -> None:
    """A span for an interval already measured (e.g. a queue wait), with wall-clock ns bounds."""
    tracing = _active
    if tracing is None or not _traced(parent):
        return
    tracing.tracer.start_span(name, context=parent, attributes=attributes, start_time=start_ns).end(end_time=end_ns)


def event(target: Span | None, name: str, **attributes: Any) -> None:
    """An event on ``target`` (None: tracing off, nothing to do)."""
    if target is not None:
        target.add_event(name, attributes)


def annotate(target: Span | None, **attributes: Any) -> None:
    """Set attributes on ``target`` (None: tracing off, nothing to do)."""
    if target is not None:
        target.set_attributes(attributes)


def start(name: str, **attributes: Any) -> Span | None:
    """A span that outlives this block (ended by the caller with ``end()``); not made current."""
    tracing = _active
    if tracing is None or not _traced(None):
        return None
    return tracing.tracer.start_span(name, attributes=attributes)


@contextlib.contextmanager
def activate(target: Span | None) -> Iterator[None]:
    """Make ``target`` current inside the block and end it on exit."""
    if target is None:
        yield
        return
    with trace.use_span(target, end_on_exit=True):
        yield


def context_of(target: Span | None) -> Captured | None:
    """A context holding ``target`` (to link to it from other traces)."""
    return trace.set_span_in_context(target) if target is not None else None


def wall_ns(monotonic_s: float) -> int:
    """A ``time.monotonic()`` instant as wall-clock ns (span timestamps are wall clock)."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


def log_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for the JSON logs; None when off or outside a trace."""
    if _active is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _span_context(ctx: Captured | None) -> trace.SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def _traced(parent: Captured | None) -> bool:
    """Spans are made only inside a trace (an RPC's span): never for start-up, warm-up or timers."""
    return _span_context(parent).is_valid
