"""Client-side helpers shared by the CLI and the demo (no service code: contracts and the runtime's
client settings only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.client import ClientSettings
from services.common.convert import enum_value

__all__ = ["enum_value", "generate_images", "output_paths"]


def generate_images(settings: ClientSettings, request: Any, *, timeout: float,
                    on_event: Callable[[Any], None] | None = None) -> Any:
    """Stream one Generate call; ``on_event`` sees every event; returns the Result."""
    from versus.sd35.v1 import sd35_pb2_grpc

    with settings.channel() as channel:
        stub = sd35_pb2_grpc.Sd35ServiceStub(channel)
        for event in stub.Generate(request, timeout=timeout, metadata=settings.metadata()):
            if on_event is not None:
                on_event(event)
            if event.WhichOneof("event") == "result":
                return event.result
    raise ConnectionError("the Generate stream ended without a result")


def output_paths(out: str, count: int) -> list[Path]:
    """``out.png`` for one image, ``out-0.png``, ``out-1.png``... for several."""
    path = Path(out)
    return [path] if count == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]
