"""Open Inference Protocol endpoints for the route tests, each consistent with its own ModelMetadata: one BYTES
input ``image`` [-1] (encoded images) and one FP32 output ``scores`` [-1, N] over its labels, scores from a hash
of each image. Each records the bytes it received and the bytes it answered (the pass-through checks).

- ``HashClassifier()``: the reference.
- ``HashClassifier(flip=0.05)``: the same network except that, for 5% of images (chosen by a hash of the image),
  its two best labels change places: a candidate that flips 5% of answers.
- ``HashClassifier(order=...)``: the same answers over labels listed in another order (a server with another
  label file): answers must still compare by label name.
- ``mode="hang"`` never answers; ``mode="error"`` answers INTERNAL (a failing candidate); ``mode="unavailable"``
  answers UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SERVICE = "inference.GRPCInferenceService"


def _point(data: bytes, purpose: bytes) -> float:
    return int.from_bytes(hashlib.sha256(purpose + data).digest()[:8], "big") / 2.0**64


def reference_scores(data: bytes, n: int = len(LABELS)) -> np.ndarray:
    """The reference network's scores for one image, over LABELS' order (distinct values: no ties)."""
    raw = b"".join(hashlib.sha256(data + i.to_bytes(4, "big")).digest() for i in range((n * 4 + 31) // 32))
    return np.frombuffer(raw[:n * 4], dtype=">u4").astype(np.float64) / 2**32


class HashClassifier:
    """A fake classifier endpoint (see the module docstring)."""

    def __init__(self, model: str = "clf", *, flip: float = 0.0, order: tuple[str, ...] = LABELS,
                 mode: str = "ok", version: str = "1") -> None:
        assert sorted(order) == sorted(LABELS)
        self.model, self.version, self.flip, self.order, self.mode = model, version, flip, order, mode
        self.received: list[bytes] = []
        self.answered: list[bytes] = []
        self.calls = 0

    def write_labels(self, path: Path) -> Path:
        path.write_text("\n".join(self.order) + "\n")
        return path

    def metadata(self) -> pb.ModelMetadataResponse:
        return pb.ModelMetadataResponse(
            name=self.model, versions=[self.version], platform="fake_hash",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name="image", datatype="BYTES", shape=[-1])],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name="scores", datatype="FP32",
                                                              shape=[-1, len(self.order)])])

    def scores(self, data: bytes) -> np.ndarray:
        """Scores over this endpoint's own label order."""
        ref = reference_scores(data)
        if self.flip and _point(data, b"flip") < self.flip:
            best, second = np.argsort(-ref)[:2]
            ref[best], ref[second] = ref[second], ref[best]
        by_name = dict(zip(LABELS, ref, strict=True))
        return np.asarray([by_name[label] for label in self.order], dtype=np.float32)

    async def infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.received.append(raw)
        self.calls += 1
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode in ("error", "unavailable"):
            code = grpc.StatusCode.INTERNAL if self.mode == "error" else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, f"{self.model}: {self.mode}")
        request = pb.ModelInferRequest.FromString(raw)
        if request.model_name != self.model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_name!r}")
        if len(request.inputs) != 1 or request.inputs[0].datatype != "BYTES" or not request.raw_input_contents:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "one BYTES input 'image' in raw_input_contents")
        images = [bytes(b) for b in deserialize_bytes_tensor(request.raw_input_contents[0])]
        scores = np.stack([self.scores(d) for d in images])
        reply = pb.ModelInferResponse(model_name=self.model, model_version=self.version, id=request.id)
        reply.outputs.add(name="scores", datatype="FP32", shape=list(scores.shape))
        reply.raw_output_contents.append(scores.astype("<f4").tobytes())
        answer = reply.SerializeToString()
        self.answered.append(answer)
        return answer

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: object) -> pb.ModelMetadataResponse:
        if request.name != self.model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.name!r}")  # type: ignore[attr-defined]
        return self.metadata()

    async def model_ready(self, request: pb.ModelReadyRequest, context: object) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == self.model)


def request_bytes(model: str, images: list[bytes], request_id: str = "") -> bytes:
    """A client's ModelInferRequest for encoded images, as bytes."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="image", datatype="BYTES", shape=[len(images)])
    encoded = np.empty(len(images), dtype=np.object_)
    encoded[:] = images
    request.raw_input_contents.append(serialize_byte_tensor(encoded).item())
    return request.SerializeToString()


class OipServer:
    """A fake endpoint as a server for ``conftest.InProcessServer`` (``create`` / ``start`` / ``stop``)."""

    def __init__(self, fake: HashClassifier) -> None:
        self.fake = fake
        self.server = grpc.aio.server()

        def typed(fn, request_cls, response_cls):  # noqa: ANN001, ANN202
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=request_cls.FromString,
                                                       response_serializer=response_cls.SerializeToString)

        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(fake.infer),  # raw bytes: what was sent, recorded
            "ModelMetadata": typed(fake.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelReady": typed(fake.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        }),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float, drain_delay: float = 0) -> None:
        await self.server.stop(grace)

    @classmethod
    def create(cls, fake: HashClassifier) -> tuple[OipServer, int]:
        server = cls(fake)
        return server, server.port
