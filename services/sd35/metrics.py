"""SD3.5-specific metrics on top of the shared ones."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.metrics import Metrics

_GEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Sd35Metrics(Metrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.generation_seconds = Histogram("versus_generation_seconds", "Generate wall time from start to result.",
                                            ("model",), buckets=_GEN_BUCKETS, registry=r)
        self.step_seconds = Histogram("versus_step_seconds", "Time per denoising step.", ("model",),
                                      buckets=_STEP_BUCKETS, registry=r)
        self.images_generated = Counter("versus_images_generated", "Images generated.", ("model",), registry=r)
        self.cancellations = Counter("versus_cancellations", "Generations stopped early, by reason.",
                                     ("model", "reason"), registry=r)
        self.adapter_loads = Counter("versus_adapter_loads", "LoRA adapters loaded.", ("model",), registry=r)
