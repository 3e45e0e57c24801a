"""Services that lie about their weights, each consistent with its own GetModelInfo (issue 20 §3, §5).

Each is the loopback fake ViT of ``fake_services`` (its answers are computed from the image bytes) whose
GetModelInfo describes chosen weight files: what a hostile deployment can say for free. The gateway must
take none of it as proof. Honest controls share the same answers and differ only in what the gateway can
hash itself, so a test can assert that exactly the weights mark moves.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import grpc
from fake_services import FakeVit, Loopback
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2_grpc

from services.common.weights import combined_digest, weight_files

SHIPPED = Path(__file__).parent.parent.parent / "services/ranker/catalog"


class DescribedVit(FakeVit):
    """The fake ViT, describing ``weights`` as its own (source, files, digest, kind: all its word)."""

    def __init__(self, weights: common_pb2.ServedWeightsInfo, model_id: str = "fake-vit") -> None:
        super().__init__()
        self.weights, self.model_id = weights, model_id

    async def GetModelInfo(self, request, context):
        reply = await super().GetModelInfo(request, context)
        reply.model.id = self.model_id
        reply.model.properties.clear()
        reply.model.weights.CopyFrom(self.weights)
        return reply


def describing(weights: common_pb2.ServedWeightsInfo) -> Loopback:
    return Loopback(DescribedVit(weights), vit_pb2_grpc.add_VitServiceServicer_to_server)


def described_as(directory: Path, source: str = "", kind: str = "external") -> common_pb2.ServedWeightsInfo:
    """What an honest service loading ``directory`` reports (its files' real sha256)."""
    files = weight_files(directory)
    return common_pb2.ServedWeightsInfo(
        source=source or str(directory), digest=combined_digest(files), reported_kind=kind,
        files=[common_pb2.WeightFile(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes) for f in files])


def echoing(published: dict[str, str], hub_id: str) -> common_pb2.ServedWeightsInfo:
    """The lie "echoed digest": the catalog's published files and their digest, said of weights nobody can read."""
    files = [common_pb2.WeightFile(path=p, sha256=d, size_bytes=1) for p, d in sorted(published.items())]
    total = hashlib.sha256()
    for f in files:
        total.update(f"{f.path}\0{f.sha256}\n".encode())
    return common_pb2.ServedWeightsInfo(source=hub_id, digest=total.hexdigest(), reported_kind="real", files=files)


def external_copy(model_dir: Path, into: Path) -> Path:
    """``model_dir`` copied without the project's marker and known answers: someone else's weights, as a store
    holds them (the fake ViT's answers are not those weights': with their record, known answers contradict)."""
    shutil.copytree(model_dir, into)
    (into / "versus-weights.json").unlink(missing_ok=True)
    (into / "versus-known-answers.json").unlink(missing_ok=True)
    return into


def catalog_with(root: Path, model: str, hub_id: str, published: dict[str, str]) -> Path:
    """The shipped catalog with ``model`` pointing at ``hub_id`` and recording ``published`` files."""
    root.mkdir(parents=True)
    for path in SHIPPED.glob("*.json"):
        shutil.copy(path, root / path.name)
    doc = json.loads((SHIPPED / f"{model}.json").read_text())
    doc |= {"hub_id": hub_id, "published_files": [{"path": p, "sha256": d} for p, d in published.items()],
            "published_files_source": f"https://huggingface.co/{hub_id}/tree/main (test fixture)" if published
            else "not found: test fixture"}
    (root / f"{model}.json").write_text(json.dumps(doc))
    return root


class SwappedVit(vit_pb2_grpc.VitServiceServicer):
    """The lie "changed model behind the endpoint": every call goes to a real vit service at ``target`` (other
    weights), while GetModelInfo describes ``weights`` (the files the endpoint served before)."""

    def __init__(self, target: str, weights: common_pb2.ServedWeightsInfo) -> None:
        self.target, self.weights = target, weights

    async def _forward(self, method: str, request: object, context: object) -> object:
        async with grpc.aio.insecure_channel(self.target) as ch:
            return await getattr(vit_pb2_grpc.VitServiceStub(ch), method)(request, timeout=60)

    async def Classify(self, request, context):
        return await self._forward("Classify", request, context)

    async def Embed(self, request, context):
        return await self._forward("Embed", request, context)

    async def CreateHead(self, request, context):
        return await self._forward("CreateHead", request, context)

    async def DeleteHead(self, request, context):
        return await self._forward("DeleteHead", request, context)

    async def GetModelInfo(self, request, context):
        reply = await self._forward("GetModelInfo", request, context)
        reply.model.weights.CopyFrom(self.weights)
        reply.model.properties.clear()
        return reply


def swapped(target: str, weights: common_pb2.ServedWeightsInfo) -> Loopback:
    return Loopback(SwappedVit(target, weights), vit_pb2_grpc.add_VitServiceServicer_to_server)


def perturbed_copy(model_dir: Path, into: Path, scale: float = 0.05) -> Path:
    """``model_dir`` with every weight tensor moved by seeded noise: the same architecture, other weights."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(model_dir, into)
    for f in into.rglob("*.safetensors"):
        tensors = load_file(f)
        rng = np.random.default_rng(7)
        save_file({k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in tensors.items()}, f)
    (into / "versus-known-answers.json").unlink(missing_ok=True)
    return into
