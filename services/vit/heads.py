"""Custom classification heads: linear probes trained on the model's embeddings (no gRPC)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from services.common.errors import AlreadyExists, InvalidArgument, ResourceExhausted, quote
from services.vit.errors import HeadNotFound

#: Head names: 1..64 characters of [A-Za-z0-9_.-] (documented in vit.proto).
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_RULE = "must be 1..64 characters of [A-Za-z0-9_.-]"
#: Longest label of a custom head, in characters.
MAX_LABEL_CHARS = 128


@dataclass(frozen=True)
class Head:
    """A fitted linear probe over L2-normalised final CLS embeddings."""

    name: str
    labels: tuple[str, ...]
    weight: torch.Tensor  # [K, D]
    bias: torch.Tensor  # [K]
    examples: int
    training_accuracy: float

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """[D] normalised embedding → [K] logits."""
        return self.weight @ embedding + self.bias


def fit_linear_probe(features: np.ndarray, targets: np.ndarray, num_classes: int, epochs: int,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Multinomial logistic regression by full-batch L-BFGS with a small L2 penalty.

    Deterministic for a given seed. Returns (weight [K, D], bias [K], training accuracy).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.long)
    linear = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        linear.weight.normal_(0, 0.01, generator=gen)
        linear.bias.zero_()
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=epochs, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), y) + 1e-4 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        accuracy = float((linear(x).argmax(dim=1) == y).float().mean())
    return linear.weight.detach().clone(), linear.bias.detach().clone(), accuracy


class HeadLimit(ResourceExhausted):
    """All head slots are taken (retrying will not help until one is deleted)."""


class HeadRegistry:
    """Named heads held in memory (bounded)."""

    def __init__(self, max_heads: int) -> None:
        self._heads: dict[str, Head] = {}
        self._max = max_heads

    @staticmethod
    def check_name(name: str, field: str = "name") -> None:
        """Refuse a malformed head name up front (before any lookup or message quotes it)."""
        if not _NAME.fullmatch(name):
            raise InvalidArgument(field, f"{NAME_RULE}, got {quote(name)}")

    @staticmethod
    def validate_new(name: str, labels: list[str]) -> None:
        HeadRegistry.check_name(name)
        for i, label in enumerate(labels):
            if not label or len(label) > MAX_LABEL_CHARS or "\x00" in label:
                raise InvalidArgument(f"examples[{i}].label",
                                      f"must be 1..{MAX_LABEL_CHARS} characters without NUL, got {quote(label)}")
        distinct = len(set(labels))
        if not 2 <= distinct <= 1000:
            raise InvalidArgument("examples", f"need 2..1000 distinct labels, got {distinct}")

    def check_free(self, name: str) -> None:
        if name in self._heads:
            raise AlreadyExists(f"head {quote(name)} already exists")
        if len(self._heads) >= self._max:
            raise HeadLimit(f"{self._max} heads exist; delete one first")

    def add(self, head: Head) -> None:
        self.check_free(head.name)
        self._heads[head.name] = head

    def get(self, name: str, field: str = "head") -> Head:
        self.check_name(name, field)
        try:
            return self._heads[name]
        except KeyError:
            raise HeadNotFound(f"no head named {quote(name)}", resource_type="head", resource_name=name) from None

    def delete(self, name: str) -> None:
        self.get(name, "name")
        del self._heads[name]

    def list(self) -> list[Head]:
        return sorted(self._heads.values(), key=lambda h: h.name)
