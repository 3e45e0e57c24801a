"""Device selection shared by the model services (torch only; no gRPC)."""

from __future__ import annotations

import torch

from services.common.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; an explicit CUDA device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev
