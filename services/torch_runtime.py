"""What the model services (vit, sd35) share that needs torch: device choice, threads, GPU memory.

The runtime (``services.common``) never imports torch, so the ranker and the gateway never load it;
this module sits between the runtime and the two model services (see the import-linter contracts).
"""

from __future__ import annotations

import torch
from prometheus_client import Gauge

from services.common.errors import ConfigError
from services.common.metrics import Metrics


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; an explicit CUDA device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


def set_threads(threads: int) -> None:
    """Give torch an explicit intra-op thread count (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def watch_gpu_memory(metrics: Metrics) -> Gauge | None:
    """Export torch's CUDA memory counters as ``versus_gpu_memory_bytes{device,kind}`` (read at scrape
    time) when a GPU is present; registered once per metrics registry."""
    if not torch.cuda.is_available():
        return None
    gauge = Gauge("versus_gpu_memory_bytes", "GPU memory held by torch.", ("device", "kind"), registry=metrics.registry)
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        gauge.labels(device, "allocated").set_function(lambda i=index: torch.cuda.memory_allocated(i))
        gauge.labels(device, "reserved").set_function(lambda i=index: torch.cuda.memory_reserved(i))
    return gauge
