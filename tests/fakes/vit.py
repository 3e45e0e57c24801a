"""ViT services that lie consistently: each says of itself (GetModelInfo) exactly what it does, so no check
can catch it by comparing the service with its own description (issue 20 §5). Each is the stand-in ViT of
``fake_services`` with one lie; ``tests/test_gateway_checks.py`` asserts exactly which rows leave
VERIFIED_LIVE for each.

- ``Int8Claiming``: fp32 that reports INT8 (no faster than the fp32 deployment it is timed against);
- ``HashClassifier(n)``: n labels, scores from a hash of the image bytes (n = 1 and 10);
- ``ConstantClassifier``: the catalog's 1000 labels, the same scores for every image;
- ``HashEmbeddings``: 768-wide vectors from a hash of the image bytes, for every layer;
- ``MeanColourHead``: heads that answer the training label of the nearest mean colour.
"""

from __future__ import annotations

import hashlib

import numpy as np
from fake_services import LABELS, FakeVit, Loopback, _colour
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2_grpc


def _hashed(data: bytes, n: int) -> np.ndarray:
    out, counter = [], 0
    while len(out) < n:
        out.extend(hashlib.sha256(data + counter.to_bytes(4, "big")).digest())
        counter += 1
    return np.asarray(out[:n], dtype=np.float64) / 255.0 - 0.5


class HashClassifier(FakeVit):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.labels = LABELS[:n]  # GetModelInfo says n labels, as it answers

    def logits(self, data: bytes) -> list[float]:
        return list(_hashed(data, len(self.labels)) * 8)


class ConstantClassifier(FakeVit):
    def logits(self, data: bytes) -> list[float]:
        return list(_hashed(b"the same for every image", len(self.labels)) * 8)


class HashEmbeddings(FakeVit):
    def vector(self, data: bytes) -> np.ndarray:
        return _hashed(data, self.width)


class MeanColourHead(FakeVit):
    def __init__(self) -> None:
        super().__init__()
        self.colours: dict[str, dict[str, np.ndarray]] = {}

    async def CreateHead(self, request, context):
        reply = await super().CreateHead(request, context)
        groups: dict[str, list[tuple[float, float, float]]] = {}
        for ex in request.examples:
            groups.setdefault(ex.label, []).append(_colour(ex.image.data))
        self.colours[request.name] = {k: np.mean(v, axis=0) for k, v in groups.items()}
        return reply

    def head_label(self, head: str, data: bytes) -> str:
        means, colour = self.colours[head], np.asarray(_colour(data))
        return min(means, key=lambda k: float(np.linalg.norm(means[k] - colour)))


def serve(fake: FakeVit) -> Loopback:
    return Loopback(fake, vit_pb2_grpc.add_VitServiceServicer_to_server)


def int8_claiming() -> Loopback:
    return serve(FakeVit(precision=common_pb2.PRECISION_INT8))
