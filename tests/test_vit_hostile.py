"""The ViT service against a hostile client: machine-readable errors, bounded messages, admission
before decoding, and no INTERNAL for anything a client can send."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import InProcessServer, encode, metric_sum, sample_image
from PIL import Image
from test_vit_service import img, png, vit_config
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.client import error_details
from services.vit.server import create_server

HUGE = "h" * 20_000


@pytest.fixture(scope="module")
def server(vit_tiny_dir: Path):
    with InProcessServer(create_server, vit_config(vit_tiny_dir, max_images_per_request=8, max_queue=64)) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: InProcessServer):
    with server.channel() as channel:
        yield vit_pb2_grpc.VitServiceStub(channel)


def fail(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30, **kw)
    return info.value


def test_bad_image_carries_bad_request_with_the_field_path(stub) -> None:
    err = fail(stub.Classify, vit_pb2.ClassifyRequest(images=[img(png()), img(b"\x00" * 500)]))
    d = error_details(err)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (d.reason, d.domain) == ("INVALID_IMAGE", "versus")
    assert d.violations and d.violations[0][0] == "images[1].data"
    assert "not a decodable image" in d.violations[0][1]


def test_top_k_out_of_range_names_the_field(stub) -> None:
    d = error_details(fail(stub.Classify, vit_pb2.ClassifyRequest(images=[img(png())], top_k=5000)))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.violations[0][0] == "top_k"
    assert d.reason == "INVALID_ARGUMENT"


def test_unknown_head_carries_resource_info(stub) -> None:
    d = error_details(fail(stub.Classify, vit_pb2.ClassifyRequest(images=[img(png())], head="nope")))
    assert d.code == grpc.StatusCode.NOT_FOUND
    assert (d.reason, d.resource_type, d.resource_name) == ("HEAD_NOT_FOUND", "head", "nope")


@pytest.mark.parametrize("rpc, build", [
    ("Classify", lambda name: vit_pb2.ClassifyRequest(images=[img(png())], head=name)),
    ("DeleteHead", lambda name: vit_pb2.DeleteHeadRequest(name=name)),
    ("CreateHead", lambda name: vit_pb2.CreateHeadRequest(name=name, examples=[
        vit_pb2.LabelledImage(image=img(png(i)), label=str(i % 2)) for i in range(4)])),
])
@pytest.mark.parametrize("name", [HUGE, "bad\x00name", "sp ace", "é" * 10])
def test_hostile_head_names_are_invalid_argument_with_a_bounded_message(stub, rpc: str, build, name: str) -> None:
    err = fail(getattr(stub, rpc), build(name))
    d = error_details(err)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT, d
    assert d.violations[0][0] in ("head", "name")
    assert len(d.message) < 300  # the 20,000-character name is never echoed whole


def test_hostile_labels_are_refused_naming_the_example(stub) -> None:
    examples = [vit_pb2.LabelledImage(image=img(png(i)), label=lab) for i, lab in enumerate(["a", "b", "c\x00", "d"])]
    d = error_details(fail(stub.CreateHead, vit_pb2.CreateHeadRequest(name="h1", examples=examples)))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.violations[0][0] == "examples[2].label"
    examples[2].label = "x" * 20_000
    d = error_details(fail(stub.CreateHead, vit_pb2.CreateHeadRequest(name="h1", examples=examples)))
    assert d.violations[0][0] == "examples[2].label" and len(d.message) < 300


def test_corrupt_example_in_create_head_names_its_path(stub) -> None:
    examples = [vit_pb2.LabelledImage(image=img(png(i)), label=str(i % 2)) for i in range(4)]
    examples[3].image.data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    d = error_details(fail(stub.CreateHead, vit_pb2.CreateHeadRequest(name="h2", examples=examples)))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and d.violations[0][0] == "examples[3].image.data"


def _mutations(seed: int, count: int) -> list[bytes]:
    """Truncations, bit flips, NUL runs and spliced headers of valid files in every accepted format."""
    rng = random.Random(seed)
    sources = [encode(sample_image(s, (40, 32)).convert(mode), fmt)
               for s, (fmt, mode) in enumerate([("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("WEBP", "RGB"),
                                                 ("BMP", "RGB"), ("PNG", "RGBA")])]
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(sources))
        kind = rng.randrange(4)
        if kind == 0:
            data = data[: rng.randrange(1, len(data))]
        elif kind == 1:
            for _ in range(rng.randrange(1, 8)):
                pos = rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8)
        elif kind == 2:
            pos = rng.randrange(len(data))
            data[pos:pos + rng.randrange(1, 64)] = b"\x00" * rng.randrange(1, 64)
        else:
            data = data[:rng.randrange(8, 64)] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 256)))
        out.append(bytes(data))
    return out


def test_fuzzed_images_never_reach_internal(stub, server: InProcessServer) -> None:
    """Every mutated file is either classified or refused as INVALID_ARGUMENT naming its field."""
    seen = set()
    for data in _mutations(seed=7, count=240):
        try:
            stub.Classify(vit_pb2.ClassifyRequest(images=[img(data)], top_k=1), timeout=30)
            seen.add("OK")
        except grpc.RpcError as err:
            d = error_details(err)
            assert d.code == grpc.StatusCode.INVALID_ARGUMENT, (d, data[:32])
            assert d.violations[0][0] == "images[0].data"
            seen.add(d.code.name)
    assert "INVALID_ARGUMENT" in seen
    assert metric_sum(server.metrics(), "grpc_server_handled_total", grpc_code="INTERNAL") == 0
    assert metric_sum(server.metrics(), "grpc_server_handled_total", grpc_code="UNKNOWN") == 0


def test_stream_item_errors_are_machine_readable(stub) -> None:
    items = [vit_pb2.ClassifyStreamRequest(id="ok", image=img(png())),
             vit_pb2.ClassifyStreamRequest(id="bad", image=img(b"junk")),
             vit_pb2.ClassifyStreamRequest(id="k", image=img(png()), top_k=99999)]
    replies = list(stub.ClassifyStream(iter(items), timeout=30))
    assert [r.id for r in replies] == ["ok", "bad", "k"]
    assert replies[0].HasField("result")
    assert (replies[1].error.code, replies[1].error.reason, replies[1].error.field) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_IMAGE", "image.data")
    assert replies[2].error.field == "top_k"


@pytest.mark.slow
def test_admission_refuses_before_decoding_with_retry_info(vit_base_dir: Path) -> None:
    """Under 8x overload the refusals carry QUEUE_FULL + RetryInfo, and only admitted requests were
    ever decoded (the preprocess histogram counts exactly the accepted ones)."""
    queue, clients = 4, 32
    cfg = vit_config(vit_base_dir, max_queue=queue, max_batch_size=4, max_images_per_request=1)
    data = encode(Image.new("RGB", (224, 224), (10, 120, 200)), "PNG")
    with InProcessServer(create_server, cfg) as srv, srv.channel() as ch:
        stub = vit_pb2_grpc.VitServiceStub(ch)
        barrier = threading.Barrier(clients)

        def call(_: int) -> object:
            barrier.wait()
            try:
                stub.Classify(vit_pb2.ClassifyRequest(images=[img(data)], top_k=1), timeout=120)
                return "OK"
            except grpc.RpcError as err:
                return error_details(err)

        with ThreadPoolExecutor(clients) as pool:
            outcomes = list(pool.map(call, range(clients)))
        refused = [o for o in outcomes if o != "OK"]
        accepted = clients - len(refused)
        assert refused and accepted >= queue
        for d in refused:
            assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED and d.reason == "QUEUE_FULL", d
            assert d.retry_after_s is not None and d.retry_after_s > 0
        metrics = srv.metrics()
        assert metric_sum(metrics, "versus_preprocess_seconds_count") == accepted
        assert metric_sum(metrics, "versus_rejected_total", reason="queue_full") == len(refused)
