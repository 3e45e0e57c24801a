"""Misbehaving model services for the gateway's checks: real gRPC servers on loopback that implement the
vit and sd35 servicer interfaces from the generated stubs. Honest by default; each ``lies`` flag breaks
exactly one promise of the contract, the way a check guards against. They stand for faulty services,
never for a model's output in a test of the model."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import math
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from PIL import Image
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

#: The catalog checkpoint's label names (the project's copy of its id2label), its width and depth.
LABELS = [line for line in (Path(__file__).resolve().parent.parent / "services/vit/data/imagenet1k_labels.txt")
          .read_text(encoding="utf-8").splitlines() if line]
WIDTH, LAYERS, CELL = 768, 12, 8  # the features: 8x8-pixel cell means of the 224x224 image (28x28x3)


def _seed(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def _colour(data: bytes) -> tuple[float, float, float]:
    with Image.open(io.BytesIO(data)) as img:
        r, g, b = img.convert("RGB").resize((1, 1)).getpixel((0, 0))
    return r, g, b


def _features(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("RGB").resize((224, 224)), dtype=np.float64) / 255.0
    return pixels.reshape(224 // CELL, CELL, 224 // CELL, CELL, 3).mean(axis=(1, 3)).reshape(-1)


@functools.cache
def _projections(labels: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = (224 // CELL) ** 2 * 3
    return rng.normal(0, 4 / math.sqrt(n), (n, labels)), rng.normal(0, 1 / math.sqrt(n), (n, width))


class FakeVit(vit_pb2_grpc.VitServiceServicer):
    """A stand-in ViT with the catalog checkpoint's 1000 labels, 768-wide vectors and 12 layers, whose answers
    are fixed random linear maps of a coarse downsample of the picture (it passes the checks that a network
    passes; it is the fake the continuity row says it cannot rule out). Its heads are nearest-centroid on its
    own embeddings. ``lies``: sum, argmax, unsorted, order, truncate, jitter, head, internal, empty, down, count,
    real, slow, info-down. ``tests/fakes/vit.py`` holds the fakes that lie consistently."""

    labels: list[str] = LABELS
    width, layers = WIDTH, LAYERS

    def __init__(self, lies: frozenset[str] = frozenset(), precision: int = common_pb2.PRECISION_FP32,
                 delay_s: float = 0.0) -> None:
        self.lies = lies
        self.precision = precision
        self.delay_s = delay_s
        self.heads: dict[str, dict[str, np.ndarray]] = {}
        self.calls = 0

    async def _gate(self, context: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        if "slow" in self.lies:
            await asyncio.sleep(0.2)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if "down" in self.lies:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        if "internal" in self.lies:
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def logits(self, data: bytes) -> list[float]:
        return list(_features(data) @ _projections(len(self.labels), self.width)[0])

    def vector(self, data: bytes) -> np.ndarray:
        return _features(data) @ _projections(len(self.labels), self.width)[1]

    def head_label(self, head: str, data: bytes) -> str:
        v = self.vector(data)
        v = v / np.linalg.norm(v)
        means = self.heads[head]
        return min(means, key=lambda k: float(np.linalg.norm(means[k] - v)))

    def _classification(self, data: bytes, top_k: int, logits_wanted: bool, head: str) -> vit_pb2.Classification:
        if head:
            label = next(iter(sorted(self.heads[head]))) if "head" in self.lies else self.head_label(head, data)
            return vit_pb2.Classification(labels=[vit_pb2.Label(index=0, label=label, score=1.0)])
        logits = self.logits(data)
        top = max(logits)
        exp = [math.exp(v - top) for v in logits]
        probs = [e / sum(exp) for e in exp]
        if "sum" in self.lies:
            probs = [p * 0.5 for p in probs]
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        if "argmax" in self.lies:
            order[0], order[1] = order[1], order[0]
        labels = [vit_pb2.Label(index=i, label=self.labels[i], score=probs[i]) for i in order[:top_k or 5]]
        if "empty" in self.lies:
            labels = []
        return vit_pb2.Classification(labels=labels, logits=logits if logits_wanted else [])

    async def Classify(self, request, context):
        await self._gate(context)
        if not 1 <= (request.top_k or 5) <= len(self.labels):
            await _refuse(context, "top_k", f"must be 1..{len(self.labels)}, got {request.top_k}")
        results = [self._classification(img.data, request.top_k, request.return_logits, request.head)
                   for img in request.images]
        if "order" in self.lies and len(results) > 1:
            results.reverse()
        if "count" in self.lies:
            results = results[:-1]
        return vit_pb2.ClassifyResponse(results=results, model_id="fake-vit")

    async def Embed(self, request, context):
        await self._gate(context)
        if any(not 0 <= layer <= self.layers for layer in request.layers):
            await _refuse(context, "layers", f"valid layers are 0..{self.layers}")
        out = []
        for img in request.images:
            base = self.vector(img.data)
            if "jitter" in self.lies:
                base[0] += time.perf_counter() % 1e-3
            width = self.width - 1 if "truncate" in self.lies else self.width
            layers = list(request.layers) or [self.layers]
            vectors = []
            for layer in layers:
                v = (base * (layer + 1))[:width]
                if request.normalize:
                    v = v / np.linalg.norm(v)
                vectors.append(vit_pb2.Embedding(layer=layer, values=[float(x) for x in v]))
            out.append(vit_pb2.ImageEmbeddings(embeddings=vectors))
        return vit_pb2.EmbedResponse(results=out, model_id="fake-vit", dimension=self.width)

    async def GetModelInfo(self, request, context):
        if "info-down" in self.lies:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not ready")
        kind, digest = ("real", "f" * 64) if "real" in self.lies else ("random", "a" * 64)
        return vit_pb2.GetModelInfoResponse(
            model=common_pb2.ModelInfo(id="fake-vit", family="vit", precision=self.precision, device="cpu",
                                       backend="torch", properties={"weights_kind": kind, "weights_digest": digest}),
            image_size=224, num_labels=len(self.labels), num_hidden_layers=self.layers, hidden_size=self.width,
            max_images_per_request=64, max_batch_size=32)

    async def CreateHead(self, request, context):
        await self._gate(context)
        groups: dict[str, list[np.ndarray]] = {}
        for ex in request.examples:
            v = self.vector(ex.image.data)
            groups.setdefault(ex.label, []).append(v / np.linalg.norm(v))
        self.heads[request.name] = {k: np.mean(v, axis=0) for k, v in groups.items()}
        return vit_pb2.CreateHeadResponse(head=vit_pb2.HeadInfo(name=request.name, labels=sorted(groups),
                                                                examples=len(request.examples), training_accuracy=1.0))

    async def DeleteHead(self, request, context):
        self.heads.pop(request.name, None)
        return vit_pb2.DeleteHeadResponse()


async def _refuse(context: grpc.aio.ServicerContext, field: str, message: str) -> None:
    """INVALID_ARGUMENT with a google.rpc BadRequest naming ``field``, as the real services answer."""
    from google.protobuf import any_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=field, description=message)]))
    status = rpc_status.to_status(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail]))
    await context.abort(status.code, status.details, status.trailing_metadata)


class Loopback:
    """A servicer on a grpc.aio server bound to 127.0.0.1:0, on its own event loop thread."""

    def __init__(self, servicer: object, add: object) -> None:
        self.servicer, self._add = servicer, add
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def __enter__(self) -> Loopback:
        self._thread.start()

        async def start() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server()
            self._add(self.servicer, server)  # type: ignore[operator]
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.server, self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> bool:
        """The server goes away now (in-flight calls cancelled); its port refuses from then on."""
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(30)
        return True

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def fake_vit(lies: str = "", **kw: object) -> Loopback:
    return Loopback(FakeVit(frozenset(filter(None, lies.split(","))), **kw),
                    vit_pb2_grpc.add_VitServiceServicer_to_server)
