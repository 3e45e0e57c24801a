"""Prometheus metrics for one server, on their own registry (so tests can run many servers).

Names follow go-grpc-prometheus for the RPC layer; model metrics carry a ``model`` label.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_RPC = ("grpc_type", "grpc_service", "grpc_method")


class Metrics:
    """Every metric a Versus server exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.started = Counter("grpc_server_started", "RPCs started on the server.", _RPC, registry=r)
        self.handled = Counter(
            "grpc_server_handled", "RPCs completed on the server, by status code.", (*_RPC, "grpc_code"), registry=r
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds", "RPC handling time.", _RPC, buckets=_LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge(
            "versus_rpcs_in_flight", "RPCs being handled now.", ("grpc_service", "grpc_method"), registry=r
        )
        self.queue_seconds = Histogram(
            "versus_queue_seconds",
            "Time work items waited in the queue.",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "versus_preprocess_seconds",
            "Decode and preprocess time per request.",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "versus_compute_seconds", "Model compute time per batch.", ("model",), buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "versus_batch_size", "Items per compute batch.", ("model",), buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("versus_queue_depth", "Work items waiting in the queue.", ("model",), registry=r)
        # What autoscaling reads beside the queue (deploy/k8s/components/keda-queue-depth): admitted work that has
        # not finished, whether it waits, is decoded or is computing.
        self.work_in_flight = Gauge(
            "versus_work_in_flight",
            "Work units (images, generations, comparisons) admitted and not yet finished: queued, decoding or "
            "computing.",
            ("model",),
            registry=r,
        )
        self.rejected = Counter(
            "versus_rejected", "Work refused or dropped, by reason.", ("model", "reason"), registry=r
        )
        self.items = Counter("versus_items_processed", "Work items (images) computed.", ("model",), registry=r)
        self.model_ready = Gauge(
            "versus_model_ready", "1 when the model is loaded and warmed up.", ("model",), registry=r
        )
        self._http: Any = None
        self._thread: threading.Thread | None = None

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server; returns the bound port (-1 when disabled)."""
        if port < 0:
            return -1
        self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._http.server_port)
        log.info("metrics listening", extra={"metrics_port": bound})
        return bound

    def close(self) -> None:
        """Stop the HTTP server."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
