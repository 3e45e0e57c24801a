"""Custom heads that last: stored under heads_dir, loaded at start, shared by replicas, on every backend."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import InProcessServer, encode
from test_vit_service import img, vit_config
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.errors import AlreadyExists
from services.vit.heads import Head, HeadRegistry, load_head, save_head
from services.vit.server import create_server


@pytest.fixture(scope="module")
def digits():
    from services.vit.builders import digits_splits

    return digits_splits()


def examples(split, n: int) -> list[vit_pb2.LabelledImage]:
    return [vit_pb2.LabelledImage(image=img(encode(im)), label=f"digit-{int(y)}")
            for im, y in zip(split.images[:n], split.labels[:n], strict=True)]


def head_predictions(srv: InProcessServer, images: list, head: str) -> list[str]:
    with srv.channel() as ch:
        stub = vit_pb2_grpc.VitServiceStub(ch)
        out = []
        for start in range(0, len(images), 64):
            chunk = [img(encode(im)) for im in images[start:start + 64]]
            reply = stub.Classify(vit_pb2.ClassifyRequest(images=chunk, head=head, top_k=1), timeout=120)
            out += [r.labels[0].label for r in reply.results]
    return out


def accuracy(predicted: list[str], labels: np.ndarray) -> float:
    return float(np.mean([p == f"digit-{int(y)}" for p, y in zip(predicted, labels, strict=True)]))


def test_head_classifies_held_out_digits_as_well_after_a_restart(vit_digits_dir: Path, tmp_path: Path,
                                                                 digits) -> None:
    train, held = digits
    cfg = vit_config(vit_digits_dir, heads_dir=str(tmp_path / "heads"), max_images_per_request=64)
    with InProcessServer(create_server, cfg) as srv, srv.channel() as ch:
        head = vit_pb2_grpc.VitServiceStub(ch).CreateHead(
            vit_pb2.CreateHeadRequest(name="digits-probe", examples=examples(train, 600)), timeout=300).head
        before = head_predictions(srv, held.images, "digits-probe")
    assert head.examples == 600 and len(head.labels) == 10
    assert accuracy(before, held.labels) >= 0.85  # the probe really learned the digits
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == ["digits-probe.safetensors"]  # no temp files
    with InProcessServer(create_server, cfg) as srv, srv.channel() as ch:  # a restart
        listed = vit_pb2_grpc.VitServiceStub(ch).ListHeads(vit_pb2.ListHeadsRequest(), timeout=10).heads
        assert [(h.name, h.examples, list(h.labels)) for h in listed] == [("digits-probe", 600, list(head.labels))]
        after = head_predictions(srv, held.images, "digits-probe")
    assert after == before


def test_replicas_share_heads_and_the_onnx_backend_uses_them(vit_digits_dir: Path, tmp_path: Path, digits) -> None:
    from services.vit.onnx_export import export_onnx

    train, held = digits
    onnx_dir = tmp_path / "onnx"
    export_onnx(vit_digits_dir, onnx_dir)
    heads = str(tmp_path / "shared")
    torch_cfg = vit_config(vit_digits_dir, heads_dir=heads, heads_rescan_s=0.0, max_images_per_request=64)
    onnx_cfg = vit_config(onnx_dir, backend="onnx", heads_dir=heads, heads_rescan_s=0.0, max_images_per_request=64)
    with InProcessServer(create_server, torch_cfg) as a, InProcessServer(create_server, onnx_cfg) as b:
        with a.channel() as ch:
            vit_pb2_grpc.VitServiceStub(ch).CreateHead(
                vit_pb2.CreateHeadRequest(name="shared", examples=examples(train, 300)), timeout=300)
        on_a = head_predictions(a, held.images[:64], "shared")
        on_b = head_predictions(b, held.images[:64], "shared")  # b never saw CreateHead: a lookup miss re-reads
        assert on_a == on_b
        with b.channel() as ch:
            stub_b = vit_pb2_grpc.VitServiceStub(ch)
            with pytest.raises(grpc.RpcError) as taken:  # the name is taken in the shared directory
                stub_b.CreateHead(vit_pb2.CreateHeadRequest(name="shared", examples=examples(train, 20)), timeout=60)
            assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
            stub_b.DeleteHead(vit_pb2.DeleteHeadRequest(name="shared"), timeout=10)
        with a.channel() as ch, pytest.raises(grpc.RpcError) as gone:  # deleted on b: gone on a too
            vit_pb2_grpc.VitServiceStub(ch).Classify(
                vit_pb2.ClassifyRequest(images=[img(encode(held.images[0]))], head="shared"), timeout=30)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_concurrent_creates_of_one_name_on_two_replicas_have_one_winner(vit_tiny_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    red = [encode(Image.new("RGB", (32, 32), (200 + i, 0, 0))) for i in range(4)]
    blue = [encode(Image.new("RGB", (32, 32), (0, 0, 200 + i))) for i in range(4)]
    request = vit_pb2.CreateHeadRequest(name="race", examples=[vit_pb2.LabelledImage(image=img(d), label=lab)
                                                               for lab, ds in (("red", red), ("blue", blue))
                                                               for d in ds])
    cfg = vit_config(vit_tiny_dir, heads_dir=str(tmp_path), heads_rescan_s=0.0)
    with InProcessServer(create_server, cfg) as a, InProcessServer(create_server, cfg) as b:
        def create(srv: InProcessServer) -> grpc.StatusCode:
            with srv.channel() as ch:
                try:
                    vit_pb2_grpc.VitServiceStub(ch).CreateHead(request, timeout=60)
                    return grpc.StatusCode.OK
                except grpc.RpcError as err:
                    return err.code()

        with ThreadPoolExecutor(2) as pool:
            codes = sorted(pool.map(create, (a, b)), key=str)
    assert codes == sorted([grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS], key=str)
    assert sorted(os.listdir(tmp_path)) == ["race.safetensors"]


# -- units ------------------------------------------------------------------------------------------
def _head(name: str = "h", dim: int = 4) -> Head:
    rng = np.random.default_rng(0)
    return Head(name, ("a", "b", "c"), rng.normal(size=(3, dim)).astype(np.float32), np.zeros(3, np.float32), 9, 1.0)


def test_head_file_round_trip_and_no_clobber(tmp_path: Path) -> None:
    head = _head()
    save_head(head, tmp_path)
    loaded = load_head(tmp_path / "h.safetensors")
    assert loaded.labels == head.labels and np.array_equal(loaded.weight, head.weight)
    assert (loaded.examples, loaded.training_accuracy) == (9, 1.0)
    with pytest.raises(AlreadyExists):
        save_head(_head(), tmp_path)
    assert os.listdir(tmp_path) == ["h.safetensors"]


def test_registry_skips_files_that_do_not_fit(tmp_path: Path) -> None:
    save_head(_head("good", dim=4), tmp_path)
    save_head(_head("wrong-size", dim=8), tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    registry = HeadRegistry(8, tmp_path, dimension=4, rescan_s=0.0)
    registry.open()
    assert [h.name for h in registry.list()] == ["good"]
    (tmp_path / "good.safetensors").unlink()
    assert registry.list() == []  # removed by another replica
