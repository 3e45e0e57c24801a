"""Errors of the gateway (subclasses of the shared domain errors; no gRPC here)."""

from __future__ import annotations

from services.common.errors import InvalidArgument


class EmptyComparison(InvalidArgument):
    """RenderComparison was given a comparison with no models."""

    def __init__(self) -> None:
        super().__init__("comparison", "holds no models or deployments: pass a Comparison returned by Compare")


class UnknownFormat(InvalidArgument):
    """RenderComparison was asked for a format this gateway does not know."""

    def __init__(self, value: int) -> None:
        super().__init__("format", f"unknown render format {value}: RENDER_FORMAT_MARKDOWN or RENDER_FORMAT_HTML")

