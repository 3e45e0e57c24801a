"""Custom classification heads: linear probes trained on the model's embeddings (no gRPC).

Heads persist when a heads directory is configured: one ``NAME.safetensors`` per head holding the
weights (``weight`` [K, D], ``bias`` [K]) with the labels (a JSON list) and training facts in the
file's metadata — one file, so one atomic step publishes a head. Writes go to a temporary file that is
then hard-linked to its final name (``os.link`` refuses to replace an existing file, so two replicas
creating the same name at once cannot both win) and the temporary name removed. Replicas that mount the
same directory see each other's heads: a lookup miss re-reads the directory at once, and listing or
lookups re-read it every ``rescan_s`` seconds (heads deleted elsewhere disappear then).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.common.errors import AlreadyExists, InvalidArgument, ResourceExhausted, quote
from services.vit.errors import HeadNotFound

log = logging.getLogger(__name__)

#: Head names: 1..64 characters of [A-Za-z0-9_.-] (documented in vit.proto).
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
NAME_RULE = "must be 1..64 characters of [A-Za-z0-9_.-]"
#: Longest label of a custom head, in characters.
MAX_LABEL_CHARS = 128
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Head:
    """A fitted linear probe over L2-normalised final CLS embeddings."""

    name: str
    labels: tuple[str, ...]
    weight: np.ndarray  # [K, D] float32
    bias: np.ndarray  # [K] float32
    examples: int
    training_accuracy: float

    @property
    def dimension(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, embedding: np.ndarray) -> np.ndarray:
        """[D] normalised embedding → [K] logits."""
        return (self.weight @ np.asarray(embedding, dtype=np.float32) + self.bias).astype(np.float32)


def fit_linear_probe(features: np.ndarray, targets: np.ndarray, num_classes: int, epochs: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
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
    return linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy(), accuracy


class HeadLimit(ResourceExhausted):
    """All head slots are taken (retrying will not help until one is deleted)."""


# -- files ----------------------------------------------------------------------------------------
def save_head(head: Head, directory: Path) -> None:
    """Publish ``head`` as ``directory/NAME.safetensors`` atomically; AlreadyExists if the name is taken."""
    from safetensors.numpy import save_file

    final = directory / f"{head.name}{SUFFIX}"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{head.name}.", suffix=".tmp")
    os.close(fd)
    try:
        meta = {"labels": json.dumps(list(head.labels)), "examples": str(head.examples),
                "training_accuracy": repr(head.training_accuracy)}
        save_file({"weight": np.ascontiguousarray(head.weight, np.float32),
                   "bias": np.ascontiguousarray(head.bias, np.float32)}, tmp, metadata=meta)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, final)  # atomic, and never replaces a head another replica published
        except FileExistsError:
            raise AlreadyExists(f"head {quote(head.name)} already exists") from None
    finally:
        os.unlink(tmp)


def load_head(path: Path) -> Head:
    """Read one head file (ValueError/OSError when it is not a valid head)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            weight, bias = fh.get_tensor("weight"), fh.get_tensor("bias")
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - SafetensorError is not importable as a type; any failure = bad file
        raise ValueError(f"not a head file: {str(exc)[:200]}") from None
    labels = tuple(json.loads(meta["labels"]))
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(labels) != weight.shape[0]:
        raise ValueError(f"inconsistent shapes {weight.shape} / {bias.shape} / {len(labels)} labels")
    return Head(path.name[: -len(SUFFIX)], labels, weight.astype(np.float32), bias.astype(np.float32),
                int(meta.get("examples", 0)), float(meta.get("training_accuracy", 0.0)))


class HeadRegistry:
    """Named heads (bounded), in memory and — with a directory — on disk, shared by replicas."""

    def __init__(self, max_heads: int, directory: Path | None = None, *, dimension: int = 0,
                 rescan_s: float = 10.0) -> None:
        self._heads: dict[str, Head] = {}
        self._max = max_heads
        self.directory = directory
        self.dimension = dimension
        self._rescan_s = rescan_s
        self._scanned = float("-inf")
        self._mtimes: dict[str, float] = {}

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

    # -- the directory ------------------------------------------------------------------------------
    def open(self) -> None:
        """Create the directory if needed and load every head in it (at start-up)."""
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.rescan()
            log.info("heads loaded", extra={"heads_dir": str(self.directory), "heads": len(self._heads)})

    def rescan(self) -> None:
        """Make memory match the directory: new or changed files loaded, removed ones dropped."""
        if self.directory is None:
            return
        self._scanned = time.monotonic()
        seen: dict[str, float] = {}
        for path in self.directory.glob(f"*{SUFFIX}"):
            name = path.name[: -len(SUFFIX)]
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:  # deleted while we listed
                continue
            seen[name] = mtime
            if name in self._heads and self._mtimes.get(name) == mtime:
                continue
            head = self._read(path)
            if head is not None:
                self._heads[name] = head
        for name in set(self._heads) - set(seen):
            del self._heads[name]
        self._mtimes = seen

    def _read(self, path: Path) -> Head | None:
        try:
            head = load_head(path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("skipping unreadable head file", extra={"path": str(path), "error": str(exc)[:200]})
            return None
        if not _NAME.fullmatch(head.name) or (self.dimension and head.dimension != self.dimension):
            log.warning("skipping head that does not fit this model",
                        extra={"path": str(path), "dimension": head.dimension, "model_dimension": self.dimension})
            return None
        return head

    def _maybe_rescan(self) -> None:
        if self.directory is not None and time.monotonic() - self._scanned >= self._rescan_s:
            self.rescan()

    # -- operations ---------------------------------------------------------------------------------
    def check_free(self, name: str) -> None:
        self._maybe_rescan()
        if name in self._heads or (self.directory is not None and (self.directory / f"{name}{SUFFIX}").exists()):
            raise AlreadyExists(f"head {quote(name)} already exists")
        if len(self._heads) >= self._max:
            raise HeadLimit(f"{self._max} heads exist; delete one first")

    def add(self, head: Head) -> None:
        """Register ``head``; with a directory, publish its file first (the file is the source of truth)."""
        self.check_free(head.name)
        if self.directory is not None:
            save_head(head, self.directory)
            self._mtimes[head.name] = (self.directory / f"{head.name}{SUFFIX}").stat().st_mtime
        self._heads[head.name] = head

    def get(self, name: str, field: str = "head") -> Head:
        self.check_name(name, field)
        self._maybe_rescan()
        if name not in self._heads and self.directory is not None:
            self.rescan()  # another replica may have created it
        try:
            return self._heads[name]
        except KeyError:
            raise HeadNotFound(f"no head named {quote(name)}", resource_type="head", resource_name=name) from None

    def delete(self, name: str) -> None:
        self.get(name, "name")
        if self.directory is not None:
            try:
                (self.directory / f"{name}{SUFFIX}").unlink()
            except FileNotFoundError:
                pass  # another replica deleted it first: the outcome the caller wanted
        self._heads.pop(name, None)
        self._mtimes.pop(name, None)

    def list(self) -> list[Head]:
        self._maybe_rescan()
        return sorted(self._heads.values(), key=lambda h: h.name)
