"""Pairing two replies to the same request: per batch row, each side's top-1 label and the overlap of their
top-5 labels, compared by label name (each side's own labels, so that two servers with different label orders
still compare). Pure: protobuf and numpy in, rows out.

- An FP32 ``[n, N]`` score output with N = the side's label count: top-1 and top-5 by score.
- Otherwise a BYTES label output (a label per row, or Triton's classification ``"score:index:label"`` entries
  best first, ``[n]`` or ``[n, k]``): top-1 only, ``top5_overlap = -1``.
- Anything else, or sides that disagree on n: no rows (the pair still carries status and latency).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor
from versus.ranker.v1 import routes_pb2

from services.gateway.deployments import normalise

MAX_ROWS = 4096
TOP = 5


@dataclass(frozen=True)
class Side:
    """What one side's replies mean: its labels in index order (empty: unknown) and its score output's name."""

    labels: tuple[str, ...] = ()
    score_output: str = ""


@dataclass(frozen=True)
class Answers:
    """One side's answers for a batch: top-1 label per row, and the top-5 labels per row when scores exist."""

    top1: list[str]
    top5: list[frozenset[str]] | None


def decode(raw: bytes) -> service_pb2.ModelInferResponse | None:
    try:
        return service_pb2.ModelInferResponse.FromString(raw)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and others on hostile bytes
        return None


def answers(reply: service_pb2.ModelInferResponse, side: Side) -> Answers | None:
    """This side's top labels per row, or None when the reply holds nothing comparable."""
    scores = _scores(reply, side)
    if scores is not None:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP]
        names = np.asarray(side.labels, dtype=object)
        return Answers([str(names[row[0]]) for row in order],
                       [frozenset(normalise(str(n)) for n in names[row]) for row in order])
    top1 = _label_output(reply)
    return Answers(top1, None) if top1 else None


def pair_rows(primary: service_pb2.ModelInferResponse, candidate: service_pb2.ModelInferResponse,
              p: Side, c: Side) -> list[routes_pb2.RouteRow]:
    """The rows of one pair: the candidate's labels named as the primary's where their names match."""
    a, b = answers(primary, p), answers(candidate, c)
    if a is None or b is None or len(a.top1) != len(b.top1) or not 0 < len(a.top1) <= MAX_ROWS:
        return []
    same_name = {normalise(label): label for label in (*p.labels, *a.top1)}
    rows = []
    for i, (mine, theirs) in enumerate(zip(a.top1, b.top1, strict=True)):
        overlap = len(a.top5[i] & b.top5[i]) if a.top5 is not None and b.top5 is not None else -1
        rows.append(routes_pb2.RouteRow(primary_label=mine, candidate_label=same_name.get(normalise(theirs), theirs),
                                        top5_overlap=overlap))
    return rows


def _scores(reply: service_pb2.ModelInferResponse, side: Side) -> np.ndarray | None:
    n_labels = len(side.labels)
    if not n_labels:
        return None
    for i, out in enumerate(reply.outputs):
        if side.score_output and out.name != side.score_output:
            continue
        if out.datatype != "FP32" or len(out.shape) != 2 or out.shape[1] != n_labels or out.shape[0] < 1:
            continue
        rows = int(out.shape[0])
        if i < len(reply.raw_output_contents):
            raw = reply.raw_output_contents[i]
            if len(raw) != rows * n_labels * 4:
                return None
            values = np.frombuffer(raw, dtype="<f4")
        else:
            values = np.asarray(out.contents.fp32_contents, dtype=np.float32)
            if values.size != rows * n_labels:
                return None
        values = values.reshape(rows, n_labels)
        return values if np.isfinite(values).all() else None
    return None


def _label_output(reply: service_pb2.ModelInferResponse) -> list[str]:
    """Top-1 label per row from the first BYTES output shaped [n] or [n, k]."""
    for i, out in enumerate(reply.outputs):
        if out.datatype != "BYTES" or len(out.shape) not in (1, 2) or out.shape[0] < 1:
            continue
        per_row = int(out.shape[1]) if len(out.shape) == 2 else 1
        if i < len(reply.raw_output_contents):
            try:
                items = [bytes(b) for b in deserialize_bytes_tensor(reply.raw_output_contents[i])]
            except (struct.error, ValueError):
                return []
        else:
            items = list(out.contents.bytes_contents)
        if per_row < 1 or len(items) != int(out.shape[0]) * per_row:
            return []
        return [_label_text(items[r * per_row]) for r in range(int(out.shape[0]))]
    return []


def _label_text(item: bytes) -> str:
    """A label entry: Triton's ``score:index:label`` keeps the label, anything else is the label."""
    text = item.decode("utf-8", "replace")
    parts = text.split(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        try:
            float(parts[0])
            return parts[2]
        except ValueError:
            pass
    return text
