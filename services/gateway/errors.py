"""Errors of the gateway (subclasses of the shared domain errors; no gRPC here)."""

from __future__ import annotations

from services.common.errors import InvalidArgument


class EmptyComparison(InvalidArgument):
    """RenderComparison was given a comparison with no models."""

    def __init__(self) -> None:
        super().__init__("comparison", "holds no models: pass a Comparison returned by Compare")
