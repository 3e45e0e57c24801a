"""The ViT service on real channels: behaviour, parity with transformers, errors as status codes."""

from __future__ import annotations

import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import InProcessServer, encode, metric_sum, sample_image
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from test_vit_units import BAD_IMAGES
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.vit.config import VitConfig
from services.vit.server import create_server

LIMIT_BYTES = 1 << 20


def vit_config(model: Path, **kw: object) -> VitConfig:
    base = {"model": str(model), "port": 0, "metrics_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1",
            "torch_threads": 1, "drain_delay_s": 0.0, "log_format": "text", "precision": "fp32"}
    return VitConfig.from_env({}, **(base | kw))


def img(data: bytes) -> common_pb2.Image:
    return common_pb2.Image(data=data)


def png(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(sample_image(seed, size))


@pytest.fixture(scope="module")
def tiny(vit_tiny_dir: Path):
    with InProcessServer(create_server, vit_config(vit_tiny_dir, max_images_per_request=8, max_queue=64,
                                                   max_message_bytes=LIMIT_BYTES)) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(tiny: InProcessServer):
    with tiny.channel() as channel:
        yield vit_pb2_grpc.VitServiceStub(channel)


@pytest.fixture(scope="module")
def health(tiny: InProcessServer):
    with tiny.channel() as channel:
        yield health_pb2_grpc.HealthStub(channel)


def assert_serving(health_stub) -> None:
    assert (
        health_stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    )
    svc = health_pb2.HealthCheckRequest(service="versus.vit.v1.VitService")
    assert health_stub.Check(svc, timeout=5).status == health_pb2.HealthCheckResponse.SERVING


# -- behaviour --------------------------------------------------------------------------------------
def test_classify_returns_top_k_per_image_with_timings(stub) -> None:
    reply = stub.Classify(vit_pb2.ClassifyRequest(images=[img(png(0)), img(png(1)), img(png(2))], top_k=3), timeout=30)
    assert len(reply.results) == 3 and reply.model_id == "vit-tiny"
    for result in reply.results:
        scores = [lab.score for lab in result.labels]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert reply.timings.total_ms >= reply.timings.compute_ms > 0


def test_default_top_k_and_all_labels(stub) -> None:
    assert len(stub.Classify(vit_pb2.ClassifyRequest(images=[img(png())]), timeout=30).results[0].labels) == 5
    full = stub.Classify(vit_pb2.ClassifyRequest(images=[img(png())], top_k=1000), timeout=30).results[0]
    assert len(full.labels) == 1000 and abs(sum(lab.score for lab in full.labels) - 1) < 1e-3
    assert full.labels[0].label  # names come from the model's id2label


def test_logit_parity_with_transformers(stub, vit_tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    files = []
    for i, (fmt, size) in enumerate(
        [("PNG", (300, 200)), ("JPEG", (224, 224)), ("WEBP", (97, 333)), ("BMP", (50, 60))]
    ):
        path = tmp_path / f"img{i}.{fmt.lower()}"
        sample_image(10 + i, size).save(path, format=fmt)
        files.append(path)
    processor = AutoImageProcessor.from_pretrained(vit_tiny_dir)
    model = AutoModelForImageClassification.from_pretrained(vit_tiny_dir).eval()
    with torch.inference_mode():
        pixels = processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
        expected = model(pixels).logits.numpy()
    reply = stub.Classify(
        vit_pb2.ClassifyRequest(images=[img(f.read_bytes()) for f in files], top_k=1, return_logits=True), timeout=30
    )
    got = np.array([list(r.logits) for r in reply.results])
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4


def test_embed_cls_mean_layers_and_normalize(stub) -> None:
    req = vit_pb2.EmbedRequest(
        images=[img(png(3)), img(png(4))], pooling=vit_pb2.POOLING_MEAN, layers=[0, 1, 2], normalize=True
    )
    reply = stub.Embed(req, timeout=30)
    assert reply.dimension == 64 and len(reply.results) == 2
    for per_image in reply.results:
        assert [e.layer for e in per_image.embeddings] == [0, 1, 2]
        for e in per_image.embeddings:
            assert len(e.values) == 64 and abs(np.linalg.norm(e.values) - 1) < 1e-5
    final = stub.Embed(vit_pb2.EmbedRequest(images=[img(png(3))]), timeout=30).results[0].embeddings
    assert [e.layer for e in final] == [-1] and len(final[0].values) == 64


def test_embedding_matches_transformers_cls(stub, vit_tiny_dir: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    data = png(5)
    processor = AutoImageProcessor.from_pretrained(vit_tiny_dir)
    model = AutoModelForImageClassification.from_pretrained(vit_tiny_dir).eval()
    with torch.inference_mode():
        pixels = processor(images=sample_image(5), return_tensors="pt")["pixel_values"]
        out = model.vit(pixels, output_hidden_states=True)
    reply = stub.Embed(vit_pb2.EmbedRequest(images=[img(data)], layers=[1]), timeout=30).results[0].embeddings[0]
    assert np.abs(np.array(reply.values) - out.hidden_states[1][0, 0].numpy()).max() < 1e-4
    final = stub.Embed(vit_pb2.EmbedRequest(images=[img(data)]), timeout=30).results[0].embeddings[0]
    assert np.abs(np.array(final.values) - out.last_hidden_state[0, 0].numpy()).max() < 1e-4


def test_classify_stream_in_order_with_ids_and_item_errors(stub) -> None:
    def requests():
        for i in range(20):
            data = b"garbage" if i == 7 else png(i)
            yield vit_pb2.ClassifyStreamRequest(id=f"item-{i}", image=img(data), top_k=2)

    replies = list(stub.ClassifyStream(requests(), timeout=60))
    assert [r.id for r in replies] == [f"item-{i}" for i in range(20)]
    assert replies[7].WhichOneof("outcome") == "error"
    assert replies[7].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "image" in replies[7].error.message
    assert all(len(r.result.labels) == 2 for i, r in enumerate(replies) if i != 7)


def test_model_info(stub) -> None:
    info = stub.GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=10)
    assert (info.image_size, info.num_labels, info.num_hidden_layers, info.hidden_size) == (224, 1000, 2, 64)
    assert info.model.backend == "torch" and info.model.device == "cpu" and info.model.license == "apache-2.0"
    assert info.model.precision == common_pb2.PRECISION_FP32 and info.model.parameters > 0
    assert {c.id for c in info.model.capabilities} >= {"image-classification", "image-embeddings"}


def test_custom_head_lifecycle(stub) -> None:
    red = [encode(Image.new("RGB", (32, 32), (200 + i, 10 * i, 0))) for i in range(6)]
    blue = [encode(Image.new("RGB", (32, 32), (0, 10 * i, 200 + i))) for i in range(6)]
    examples = [vit_pb2.LabelledImage(image=img(d), label="red") for d in red] + [
        vit_pb2.LabelledImage(image=img(d), label="blue") for d in blue
    ]
    head = stub.CreateHead(vit_pb2.CreateHeadRequest(name="colours", examples=examples), timeout=60).head
    assert sorted(head.labels) == ["blue", "red"] and head.examples == 12 and head.training_accuracy == 1.0
    with pytest.raises(grpc.RpcError) as dup:
        stub.CreateHead(vit_pb2.CreateHeadRequest(name="colours", examples=examples), timeout=60)
    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
    reply = stub.Classify(
        vit_pb2.ClassifyRequest(images=[img(red[0]), img(blue[0])], head="colours", top_k=1), timeout=30
    )
    assert [r.labels[0].label for r in reply.results] == ["red", "blue"]
    assert [h.name for h in stub.ListHeads(vit_pb2.ListHeadsRequest(), timeout=10).heads] == ["colours"]
    stub.DeleteHead(vit_pb2.DeleteHeadRequest(name="colours"), timeout=10)
    with pytest.raises(grpc.RpcError) as gone:
        stub.Classify(vit_pb2.ClassifyRequest(images=[img(red[0])], head="colours"), timeout=30)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


# -- bad input ------------------------------------------------------------------------------------
def _bad_requests() -> dict[str, tuple[str, object, str]]:
    cases: dict[str, tuple[str, object, str]] = {
        f"image-{name}": ("Classify", vit_pb2.ClassifyRequest(images=[img(png()), img(data)]), "images[1]")
        for name, (data, _) in BAD_IMAGES.items()
    }
    cases |= {
        "top_k-0": ("Classify", vit_pb2.ClassifyRequest(images=[img(png())], top_k=0), "top_k"),
        "top_k-too-big": ("Classify", vit_pb2.ClassifyRequest(images=[img(png())], top_k=1001), "top_k"),
        "top_k-negative": ("Classify", vit_pb2.ClassifyRequest(images=[img(png())], top_k=-1), "top_k"),
        "no-images": ("Classify", vit_pb2.ClassifyRequest(), "images"),
        "too-many-images": ("Classify", vit_pb2.ClassifyRequest(images=[img(png())] * 9), "images"),
        "layer-too-big": ("Embed", vit_pb2.EmbedRequest(images=[img(png())], layers=[1, 3]), "layers[1]"),
        "layer-negative": ("Embed", vit_pb2.EmbedRequest(images=[img(png())], layers=[-1]), "layers[0]"),
        "unknown-pooling": ("Embed", vit_pb2.EmbedRequest(images=[img(png())], pooling=7), "pooling"),
        "oversize-message": ("Classify", vit_pb2.ClassifyRequest(images=[img(b"\0" * (LIMIT_BYTES + 10))]), "request"),
        "head-bad-name": ("CreateHead", vit_pb2.CreateHeadRequest(name="../x"), "name"),
    }
    return cases


BAD_REQUESTS = _bad_requests()


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_is_invalid_argument_naming_the_field(case: str, stub, health) -> None:
    method, request, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith(field), info.value.details()
    assert_serving(health)


def test_transport_cap_beyond_twice_the_limit_is_resource_exhausted(stub, health) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(vit_pb2.ClassifyRequest(images=[img(b"\0" * (2 * LIMIT_BYTES + 10))]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_serving(health)


def test_unknown_head_is_not_found(stub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(vit_pb2.ClassifyRequest(images=[img(png())], head="nope"), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_request_id_is_echoed_in_trailers(stub) -> None:
    _, call = stub.Classify.with_call(
        vit_pb2.ClassifyRequest(images=[img(png())]), timeout=30, metadata=(("x-request-id", "abc123"),)
    )
    assert ("x-request-id", "abc123") in tuple(call.trailing_metadata())


def test_metrics_endpoint(tiny: InProcessServer, stub) -> None:
    stub.Classify(vit_pb2.ClassifyRequest(images=[img(png())]), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Classify(vit_pb2.ClassifyRequest(), timeout=30)
    text = urllib.request.urlopen(f"http://127.0.0.1:{tiny.server.metrics_port}/metrics", timeout=10).read().decode()
    for needle in (
        'grpc_server_started_total{grpc_method="Classify"',
        'grpc_code="OK"',
        'grpc_code="INVALID_ARGUMENT"',
        "grpc_server_handling_seconds_bucket",
        'versus_queue_seconds_bucket{le="0.001",model="vit-tiny"}',
        "versus_compute_seconds_count",
        "versus_batch_size_bucket",
        "versus_queue_depth",
        "versus_rpcs_in_flight",
        'versus_model_ready{model="vit-tiny"} 1.0',
        "versus_preprocess_seconds",
    ):
        assert needle in text, needle


def test_reflection_lists_services(tiny: InProcessServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with tiny.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(
            iter(
                stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
            )
        )
    names = {s.name for s in reply.list_services_response.service}
    assert {"versus.vit.v1.VitService", "grpc.health.v1.Health"} <= names


# -- accuracy through gRPC ----------------------------------------------------------------------------
def test_digits_accuracy_through_grpc_equals_in_process(vit_digits_dir: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from services.vit.builders import digits_splits

    _, held = digits_splits()
    files = [encode(im) for im in held.images]
    with (
        InProcessServer(create_server, vit_config(vit_digits_dir, max_images_per_request=64)) as srv,
        srv.channel() as ch,
    ):
        stub = vit_pb2_grpc.VitServiceStub(ch)
        predicted = []
        for start in range(0, len(files), 64):
            reply = stub.Classify(
                vit_pb2.ClassifyRequest(images=[img(d) for d in files[start : start + 64]], top_k=1), timeout=60
            )
            predicted += [int(r.labels[0].label) for r in reply.results]
    grpc_acc = float(np.mean(np.array(predicted) == held.labels))
    processor = AutoImageProcessor.from_pretrained(vit_digits_dir)
    model = AutoModelForImageClassification.from_pretrained(vit_digits_dir).eval()
    with torch.inference_mode():
        logits = model(processor(images=held.images, return_tensors="pt")["pixel_values"]).logits
    local_acc = float((logits.argmax(1).numpy() == held.labels).mean())
    assert grpc_acc >= 0.95
    assert grpc_acc == local_acc


# -- precision -------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision, min_agree", [("bf16", 0.97), ("int8", 0.97)])
def test_reduced_precision_agrees_with_fp32_on_digits(precision: str, min_agree: float, vit_digits_dir: Path) -> None:
    from services.vit.builders import digits_splits

    _, held = digits_splits()
    files = [img(encode(im)) for im in held.images[:128]]
    tops = {}
    for prec in ("fp32", precision):
        with (
            InProcessServer(
                create_server, vit_config(vit_digits_dir, precision=prec, max_images_per_request=64)
            ) as srv,
            srv.channel() as ch,
        ):
            stub = vit_pb2_grpc.VitServiceStub(ch)
            tops[prec] = [
                r.labels[0].index
                for s in (0, 64)
                for r in stub.Classify(vit_pb2.ClassifyRequest(images=files[s : s + 64], top_k=1), timeout=60).results
            ]
            info = stub.GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=10)
            assert common_pb2.Precision.Name(info.model.precision) == f"PRECISION_{prec.upper()}"
    agree = np.mean(np.array(tops["fp32"]) == np.array(tops[precision]))
    assert agree >= min_agree


# -- auth and TLS --------------------------------------------------------------------------------
def test_token_auth(vit_tiny_dir: Path) -> None:
    with InProcessServer(create_server, vit_config(vit_tiny_dir, token="s3cret")) as srv, srv.channel() as ch:
        stub = vit_pb2_grpc.VitServiceStub(ch)
        request = vit_pb2.ClassifyRequest(images=[img(png())])
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(request, timeout=10, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Classify(request, timeout=30, metadata=(("authorization", "Bearer s3cret"),)).results
        # health stays open for Kubernetes probes
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_mtls(vit_tiny_dir: Path, tls_files: dict[str, Path]) -> None:
    f = tls_files
    cfg = vit_config(
        vit_tiny_dir, tls_cert=str(f["server.crt"]), tls_key=str(f["server.key"]), tls_client_ca=str(f["ca.crt"])
    )
    request = vit_pb2.ClassifyRequest(images=[img(png())])
    with InProcessServer(create_server, cfg) as srv:
        target = f"localhost:{srv.port}"
        good = grpc.ssl_channel_credentials(
            f["ca.crt"].read_bytes(), f["client.key"].read_bytes(), f["client.crt"].read_bytes()
        )
        with grpc.secure_channel(target, good) as ch:
            assert vit_pb2_grpc.VitServiceStub(ch).Classify(request, timeout=30).results
        no_client_cert = grpc.ssl_channel_credentials(f["ca.crt"].read_bytes())
        with grpc.secure_channel(target, no_client_cert) as ch:
            with pytest.raises(grpc.RpcError) as info:
                vit_pb2_grpc.VitServiceStub(ch).Classify(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with srv.channel() as plaintext:
            with pytest.raises(grpc.RpcError) as info:
                vit_pb2_grpc.VitServiceStub(plaintext).Classify(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_server_only(vit_tiny_dir: Path, tls_files: dict[str, Path]) -> None:
    f = tls_files
    cfg = vit_config(vit_tiny_dir, tls_cert=str(f["server.crt"]), tls_key=str(f["server.key"]))
    with InProcessServer(create_server, cfg) as srv:
        creds = grpc.ssl_channel_credentials(f["ca.crt"].read_bytes())
        with grpc.secure_channel(f"localhost:{srv.port}", creds) as ch:
            assert (
                vit_pb2_grpc.VitServiceStub(ch)
                .Classify(vit_pb2.ClassifyRequest(images=[img(png())]), timeout=30)
                .results
            )


# -- loading -----------------------------------------------------------------------------------------
def test_pickle_checkpoint_is_refused(tmp_path: Path, vit_tiny_dir: Path) -> None:
    from transformers import AutoModelForImageClassification

    from services.common.errors import ModelLoadError

    model = AutoModelForImageClassification.from_pretrained(vit_tiny_dir)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # the legacy pickle layout
    for extra in ("config.json", "preprocessor_config.json"):
        (tmp_path / extra).write_bytes((vit_tiny_dir / extra).read_bytes())
    with pytest.raises(ModelLoadError, match="pickle"):
        with InProcessServer(create_server, vit_config(tmp_path)):
            pass


def test_missing_model_dir_fails_start(tmp_path: Path) -> None:
    from services.common.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        with InProcessServer(create_server, vit_config(tmp_path / "nowhere")):
            pass


# -- overload ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_overload_rejects_excess_and_serves_the_rest(vit_base_dir: Path) -> None:
    queue = 4
    cfg = vit_config(vit_base_dir, max_queue=queue, max_batch_size=1, max_images_per_request=1, preprocess_threads=2)
    data = png(0, (224, 224))
    with InProcessServer(create_server, cfg) as srv, srv.channel() as ch:
        stub = vit_pb2_grpc.VitServiceStub(ch)
        barrier = threading.Barrier(4 * queue)

        def call(_: int) -> grpc.StatusCode:
            barrier.wait()
            try:
                reply = stub.Classify(vit_pb2.ClassifyRequest(images=[img(data)], top_k=1), timeout=120)
                assert len(reply.results) == 1
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        with ThreadPoolExecutor(4 * queue) as pool:
            codes = list(pool.map(call, range(4 * queue)))
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= queue
        assert codes.count(grpc.StatusCode.OK) >= queue
        assert_serving(health_pb2_grpc.HealthStub(ch))
        assert stub.Classify(vit_pb2.ClassifyRequest(images=[img(data)]), timeout=60).results


@pytest.mark.slow
def test_deadline_exceeded_and_cancelled_work_is_dropped(vit_base_dir: Path) -> None:
    cfg = vit_config(vit_base_dir, max_batch_size=1, max_images_per_request=8)
    with InProcessServer(create_server, cfg) as srv, srv.channel() as ch:
        stub = vit_pb2_grpc.VitServiceStub(ch)
        many = vit_pb2.ClassifyRequest(images=[img(png(i, (224, 224))) for i in range(8)])
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(many, timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        srv.run(_settle())
        metrics = srv.metrics()
        assert metric_sum(metrics, "versus_items_processed_total") < 8  # the expired request's rest never ran
        assert (
            metric_sum(metrics, "versus_rejected_total", reason="deadline")
            + metric_sum(metrics, "versus_rejected_total", reason="cancelled")
            > 0
        )
        assert stub.Classify(vit_pb2.ClassifyRequest(images=[img(png())]), timeout=60).results


async def _settle() -> None:
    import asyncio

    await asyncio.sleep(2.0)


def test_pool_preprocessing_mode_gives_same_logits_and_errors(vit_tiny_dir: Path) -> None:
    """preprocess=pool (the GPU default) decodes on its own threads; results equal device mode's."""
    request = vit_pb2.ClassifyRequest(images=[img(png(1)), img(png(2, (300, 100)))], top_k=3, return_logits=True)
    logits = {}
    for mode in ("pool", "device"):
        with InProcessServer(create_server, vit_config(vit_tiny_dir, preprocess=mode)) as srv, srv.channel() as ch:
            stub = vit_pb2_grpc.VitServiceStub(ch)
            logits[mode] = [list(r.logits) for r in stub.Classify(request, timeout=30).results]
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(
                    vit_pb2.ClassifyRequest(images=[img(png()), img(BAD_IMAGES["truncated-jpeg"][0])]), timeout=30
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith("images[1]")
    assert np.array_equal(np.array(logits["pool"]), np.array(logits["device"]))


@pytest.mark.gpu
def test_cuda_bf16_agrees_with_cpu_fp32_on_digits(vit_digits_dir: Path) -> None:
    """On a GPU, device auto picks CUDA; bf16 there keeps top-1 agreement with fp32 on the CPU."""
    from services.vit.builders import digits_splits

    _, held = digits_splits()
    request = vit_pb2.ClassifyRequest(images=[img(encode(i)) for i in held.images[:64]], top_k=1)
    labels = {}
    for device, precision in (("cpu", "fp32"), ("auto", "bf16")):
        cfg = vit_config(vit_digits_dir, device=device, precision=precision, max_images_per_request=64)
        with InProcessServer(create_server, cfg) as srv, srv.channel() as ch:
            stub = vit_pb2_grpc.VitServiceStub(ch)
            info = stub.GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=30)
            assert info.model.device.startswith("cuda" if device == "auto" else "cpu")
            labels[device] = [r.labels[0].index for r in stub.Classify(request, timeout=60).results]
    agree = sum(a == b for a, b in zip(labels["cpu"], labels["auto"], strict=True)) / 64
    assert agree >= 0.97
