"""What a served model reports about itself beyond its metadata: Triton's ``ModelConfig`` and
``ModelStatistics`` messages (no transport; the gRPC servicer and the REST handler both answer them).

:class:`ModelStats` keeps one model's counters, fed from the timings the services already measure:
the repository records each request's outcome and end-to-end time (``success`` / ``fail``), and the
model's adapter records where a successful request's time went (:class:`Phases`): queue wait, input
decoding (``compute_input``), model compute (``compute_infer``) and output encoding
(``compute_output``), plus the compute batches it ran in where the service knows them.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

#: OIP datatype → Triton's config enum (BYTES is TYPE_STRING there).
CONFIG_TYPE = {"BOOL": mc.TYPE_BOOL, "UINT8": mc.TYPE_UINT8, "UINT16": mc.TYPE_UINT16, "UINT32": mc.TYPE_UINT32,
               "UINT64": mc.TYPE_UINT64, "INT8": mc.TYPE_INT8, "INT16": mc.TYPE_INT16, "INT32": mc.TYPE_INT32,
               "INT64": mc.TYPE_INT64, "FP16": mc.TYPE_FP16, "FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64,
               "BYTES": mc.TYPE_STRING}
#: Batch ids remembered to count a compute batch once though several requests' items shared it.
_SEEN_BATCHES = 1024


@dataclass(frozen=True)
class Batching:
    """How requests share compute batches (Triton's ``dynamic_batching``)."""

    preferred_batch_size: int
    max_queue_delay_us: int


@dataclass(frozen=True)
class Batch:
    """One compute batch a request's items ran in: the batcher's id for it, its size and compute time."""

    id: int
    size: int
    compute_s: float


@dataclass(frozen=True)
class Phases:
    """Where one successful request's time went, in seconds, and the ``items`` (batch entries) it held."""

    items: int
    queue_s: float
    input_s: float
    infer_s: float
    output_s: float
    batches: tuple[Batch, ...] = ()


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, int(seconds * 1e9))

    def proto(self) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=self.count, ns=self.ns)


@dataclass
class ModelStats:
    """One model's cumulative statistics since the server started (event-loop owned, no locks)."""

    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, _Duration] = field(default_factory=dict)  # batch size → compute
    _seen: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=_SEEN_BATCHES))

    def outcome(self, ok: bool, seconds: float) -> None:
        """A request ended (``ok``: with a response) after ``seconds``."""
        (self.success if ok else self.fail).add(seconds)
        self.last_inference_ms = int(time.time() * 1e3)

    def phases(self, p: Phases) -> None:
        """Where a successful request's time went (its adapter calls this)."""
        self.inference_count += p.items
        self.queue.add(p.queue_s)
        self.compute_input.add(p.input_s)
        self.compute_infer.add(p.infer_s)
        self.compute_output.add(p.output_s)
        for batch in p.batches:
            if batch.id in self._seen:
                continue
            self._seen.append(batch.id)
            self.execution_count += 1
            self.batches.setdefault(batch.size, _Duration()).add(batch.compute_s)

    def proto(self, name: str, version: str) -> pb.ModelStatistics:
        stats = pb.InferStatistics(success=self.success.proto(), fail=self.fail.proto(), queue=self.queue.proto(),
                                   compute_input=self.compute_input.proto(),
                                   compute_infer=self.compute_infer.proto(),
                                   compute_output=self.compute_output.proto())
        batch_stats = [pb.InferBatchStatistics(batch_size=size, compute_infer=d.proto())
                       for size, d in sorted(self.batches.items())]
        return pb.ModelStatistics(name=name, version=version, last_inference=self.last_inference_ms,
                                  inference_count=self.inference_count, execution_count=self.execution_count,
                                  inference_stats=stats, batch_stats=batch_stats)


def _dims(shape: tuple[int, ...], batched: bool) -> tuple[list[int], mc.ModelTensorReshape | None]:
    """Triton's dims: without the batch dimension when the model batches; a per-item scalar is [1]
    reshaped to []."""
    dims = list(shape[1:] if batched else shape)
    return (dims, None) if dims else ([1], mc.ModelTensorReshape(shape=[]))


def model_config(name: str, platform: str, backend: str, max_batch_size: int, inputs: tuple, outputs: tuple,
                 batching: Batching | None) -> mc.ModelConfig:
    """Triton's ModelConfig for a model with these specs (``inputs``/``outputs``: TensorSpecs)."""
    batched = max_batch_size > 0
    config = mc.ModelConfig(name=name, platform=platform, backend=backend, max_batch_size=max_batch_size)
    for spec in inputs:
        dims, reshape = _dims(spec.shape, batched)
        config.input.append(mc.ModelInput(name=spec.name, data_type=CONFIG_TYPE[spec.datatype], dims=dims,
                                          reshape=reshape, optional=spec.optional))
    for spec in outputs:
        dims, reshape = _dims(spec.shape, batched)
        config.output.append(mc.ModelOutput(name=spec.name, data_type=CONFIG_TYPE[spec.datatype], dims=dims,
                                            reshape=reshape))
    if batching is not None:
        config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(
            preferred_batch_size=[batching.preferred_batch_size],
            max_queue_delay_microseconds=batching.max_queue_delay_us))
    return config
