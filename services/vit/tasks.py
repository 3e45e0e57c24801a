"""What a ViT request asks of a batch and what it gets back, and the batch post-processing (NumPy only).

The backend turns each request into :class:`WorkItem` objects carrying a task; the batcher runs
them; :func:`postprocess` turns one batch's :class:`~services.vit.engine.ForwardOutput` into each
item's answer (labels with scores, or pooled vectors), whichever engine computed it. Softmax, top-k and
pooling live here, once, for every engine and every protocol (native and OIP).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.backend import ModelInfo
from services.common.batcher import ItemStats
from services.vit.engine import FINAL_LAYER, ForwardOutput
from services.vit.heads import Head

POOLINGS = ("cls", "mean")
#: Field-path template of the images of a Classify/Embed request (errors name ``images[3].data``).
IMAGES = "images[{}].data"


@dataclass(frozen=True)
class LabelScore:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class ClassifyTask:
    top_k: int
    head: Head | None = None
    logits: bool = False


@dataclass(frozen=True)
class Classification:
    labels: list[LabelScore]
    logits: np.ndarray | None  # [num_labels] float32 when asked for


@dataclass(frozen=True)
class EmbedTask:
    layers: tuple[int, ...]  # FINAL_LAYER for the final output
    pooling: str
    normalize: bool


@dataclass(frozen=True)
class WorkItem:
    pixels: np.ndarray | None  # [3, H, W] float32, or None when the device thread preprocesses
    task: ClassifyTask | EmbedTask
    image: object = None  # PIL image opened by check_header (preprocess=device)
    field: str = ""
    deadline: float | None = None  # time.monotonic() by which the caller wants its answer


@dataclass(frozen=True)
class Timings:
    queue_ms: float
    compute_ms: float
    preprocess_ms: float
    total_ms: float
    #: (batcher's batch id, batch size, compute seconds) of each compute batch the request's items ran in.
    batches: tuple[tuple[int, int, float], ...] = ()


@dataclass(frozen=True)
class VitDescription:
    """What GetModelInfo reports: the shared model info plus the ViT's own facts and limits."""

    info: ModelInfo
    image_size: int
    num_labels: int
    num_hidden_layers: int
    hidden_size: int
    max_images_per_request: int
    max_batch_size: int


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of one logits row (float64 maths, stable against large logits)."""
    row = np.asarray(logits, dtype=np.float64)
    probs = np.exp(row - row.max())
    return probs / probs.sum()


def softmax_top_k(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(index, probability) of the ``k`` best classes of one logits row, best first (ties: lower index)."""
    probs = softmax(logits)
    order = np.argsort(-probs, kind="stable")[:k]
    return [(int(i), float(probs[i])) for i in order]


def pool(hidden: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """``[tokens, hidden]`` → one float32 vector: CLS token or mean over tokens, optionally L2-normed."""
    hidden = np.asarray(hidden, dtype=np.float32)
    vec = hidden[0] if pooling == "cls" else hidden.mean(axis=0)
    if normalize:
        vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
    return vec.astype(np.float32, copy=False)


def timings(started: float, preprocess_s: float, stats: Sequence[ItemStats]) -> Timings:
    """A request's timings from its items' batch statistics (compute counted once per batch)."""
    queue = max((s.queue_s for s in stats), default=0.0)
    batches = {s.batch_id: (s.batch_id, s.batch_size, s.compute_s) for s in stats}
    compute = sum(b[2] for b in batches.values())
    return Timings(queue * 1e3, compute * 1e3, preprocess_s * 1e3, (time.perf_counter() - started) * 1e3,
                   tuple(batches.values()))


def hidden_layers(items: Sequence[WorkItem]) -> frozenset[int]:
    """Hidden layers some item of a batch asks for (the final output is always computed)."""
    return frozenset(
        lab for it in items if isinstance(it.task, EmbedTask) for lab in it.task.layers if lab != FINAL_LAYER
    )


def postprocess(items: Sequence[WorkItem], out: ForwardOutput, id2label: Sequence[str]) -> list[object]:
    """Labels, head scores and pooled vectors from one batch's outputs (any backend)."""
    results: list[object] = []
    for row, item in enumerate(items):
        task = item.task
        if isinstance(task, ClassifyTask):
            results.append(_labels(out.logits[row], out.final[row], task, id2label))
        else:
            results.append([
                (layer, pool(out.final[row] if layer == FINAL_LAYER else out.hidden[layer][row], task.pooling,
                             task.normalize))
                for layer in task.layers
            ])
    return results


def _labels(logits: np.ndarray, final: np.ndarray, task: ClassifyTask, id2label: Sequence[str]) -> Classification:
    if task.head is None:
        names = id2label
    else:
        names = task.head.labels
        logits = task.head.logits(pool(final, "cls", True))
    labels = [LabelScore(i, names[i], s) for i, s in softmax_top_k(logits, task.top_k)]
    return Classification(labels, np.asarray(logits, np.float32) if task.logits else None)
