"""The one contract between the runtime and a service's model side (no gRPC here).

Every service backend subclasses :class:`ServiceBackend`: the runtime calls :meth:`start` (load and
warm up on the backend's own executor, off the event loop), reads :attr:`ready` for health, and calls
:meth:`close` after the gRPC server drained. Servicers read model facts only through
:meth:`describe`, which returns domain :class:`ModelInfo` objects (converted to protobuf once, in
:mod:`services.common.convert`).
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.common.errors import Unavailable
from services.common.metrics import Metrics
from services.common.weights import WeightsProvenance

T = TypeVar("T")

#: Precisions a model service may report (``versus.common.v1.Precision`` names, lower case).
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@dataclass(frozen=True)
class Capability:
    """One thing a served model can do."""

    id: str
    title: str
    description: str


@dataclass(frozen=True)
class ModelInfo:
    """What a backend serves, in domain terms (``versus.common.v1.ModelInfo`` on the wire)."""

    id: str
    family: str
    variant: str
    parameters: int
    precision: str  # one of PRECISIONS, or "" when not applicable
    device: str
    backend: str
    license: str = ""
    capabilities: tuple[Capability, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    weights: WeightsProvenance | None = None  # the weight files served, with their sha256 (a description)


class ServiceBackend(abc.ABC):
    """Lifecycle every service shares: load on an executor, ready flag, close.

    ``executor`` is the backend's device executor: ONE thread per device, so model calls never
    overlap and never run on the event loop. Subclasses implement :meth:`load` (runs there) and
    :meth:`describe`; they may extend :meth:`started` and :meth:`stopping` for their queues.
    """

    def __init__(self, name: str, metrics: Metrics, *, executor: ThreadPoolExecutor | None = None) -> None:
        self.name = name
        self.metrics = metrics
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"{name}-device")
        self._ready = False
        #: Set by the server: call it when readiness changes after start-up (health follows; ignored once
        #: the server stops).
        self.on_readiness: Callable[[bool], Awaitable[None]] | None = None

    @property
    def ready(self) -> bool:
        """True between a successful start and the beginning of close."""
        return self._ready

    def require_ready(self) -> None:
        """Raise UNAVAILABLE unless the model is loaded and warmed up."""
        if not self._ready:
            raise Unavailable(f"{self.name} is not loaded yet (or is shutting down)")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` on the device executor, in the caller's context (its trace span)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, contextvars.copy_context().run,
                                                                fn, *args)

    async def start(self) -> None:
        """Load and warm up (on the executor), start queues, then report ready."""
        await self.run(self.load)
        await self.started()
        self._ready = True
        for model in self.model_names():
            self.metrics.model_ready.labels(model).set(1)

    async def close(self) -> None:
        """Stop taking work, let queues finish, release the executor."""
        self._ready = False
        for model in self.model_names():
            self.metrics.model_ready.labels(model).set(0)
        await self.stopping()
        await asyncio.to_thread(self.executor.shutdown, True)  # waits for the device thread, off the loop

    # -- for subclasses ------------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self) -> None:
        """Load weights (or open stores) and warm up; runs on the executor. Raise to fail start-up."""

    @abc.abstractmethod
    def describe(self) -> list[ModelInfo]:
        """What this backend serves (one entry per hosted model or variant)."""

    def model_names(self) -> list[str]:
        """``model`` label values for the readiness gauge."""
        return [self.name]

    async def started(self) -> None:  # noqa: B027 - an optional hook
        """Hook after :meth:`load`, on the event loop (start batchers, workers)."""

    async def stopping(self) -> None:  # noqa: B027 - an optional hook
        """Hook at the start of :meth:`close`, on the event loop (drain batchers, workers)."""
