"""An OTLP/gRPC trace receiver for tests: opentelemetry-proto's TraceService on a loopback port,
keeping every span it is sent (what a collector would receive)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, object]
    events: tuple[tuple[str, dict[str, object]], ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (trace id, span id)

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(v: common_pb2.AnyValue) -> object:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(v)


def _attrs(kvs) -> dict[str, object]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    spans: list[ReceivedSpan] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: grpc.Server | None = None

    def Export(self, request, context):  # noqa: N802 - the generated servicer's name
        got = []
        for rs in request.resource_spans:
            service = str(_attrs(rs.resource.attributes).get("service.name", ""))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(ReceivedSpan(
                        service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                        s.start_time_unix_nano, s.end_time_unix_nano, _attrs(s.attributes),
                        tuple((e.name, _attrs(e.attributes)) for e in s.events),
                        tuple((lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links)))
        with self._lock:
            self.spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables that point a service at this receiver, exporting within 50 ms."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.received()
            if done(spans):
                return spans
            time.sleep(0.05)
        return self.received()

    def __enter__(self) -> OtlpReceiver:
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop(0)


def span_tree(spans: list[ReceivedSpan], trace_id: str) -> str:
    """The spans of one trace as an indented tree (children by start time): what docs/DEPLOY.md shows."""
    mine = [s for s in spans if s.trace_id == trace_id]
    ids = {s.span_id for s in mine}
    children: dict[str, list[ReceivedSpan]] = {}
    for s in mine:
        children.setdefault(s.parent_id if s.parent_id in ids else "", []).append(s)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        kids = sorted(children.get(parent, []), key=lambda x: x.start_ns)
        shown: dict[tuple[str, str, tuple], int] = {}
        for s in kids:
            key = (s.service, s.name, tuple(s.attributes.get(k) for k in _SHOWN))
            shown[key] = shown.get(key, 0) + 1
            if shown[key] == 3:  # repeated siblings (a probe's many calls): two shown, the rest counted
                more = sum(1 for k in kids if (k.service, k.name, tuple(k.attributes.get(a) for a in _SHOWN)) == key)
                what = f"{s.name} ({s.attributes['probe']})" if "probe" in s.attributes else s.name
                lines.append(f"{'  ' * depth}… {more - 2} more {what}")
            if shown[key] >= 3:
                continue
            notes = [f"{k}={v}" for k, v in s.attributes.items() if k in _SHOWN]
            steps = sum(1 for name, _ in s.events if name == "step")
            if steps:
                notes.append(f"{steps} step events")
            if s.links:
                notes.append(f"links {len(s.links)}")
            lines.append(f"{'  ' * depth}{s.service:<15} {s.name} {s.ms:.1f} ms" + (f"  ({', '.join(notes)})"
                                                                                  if notes else ""))
            walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


_SHOWN = ("batch_size", "images", "variant", "steps", "probe", "duplicate", "db.system.name", "format")
