"""The Triton backend against a real tritonserver (the one in the nvidia-pytriton wheel, CPU, Python
backend): same labels and logits as the in-process backends, Triton's outage as UNAVAILABLE and
NOT_SERVING, and the repository writer and error table as units."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import InProcessServer, encode, metric_sum, require
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_vit_service import img, vit_config
from tritonclient.utils import InferenceServerException
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.client import error_details
from services.common.errors import Cancelled, ConfigError, DeadlineExceeded, ModelLoadError
from services.vit.errors import TritonBusy, TritonRejected, TritonUnavailable
from services.vit.onnx_export import FP32_TOLERANCE
from services.vit.server import create_server
from services.vit.triton_engine import triton_error
from services.vit.triton_repo import RepoOptions, bundled_tritonserver, config_pbtxt, write_repository
from versus_cli.export import LocalTriton, _free_port


def needs_tritonserver() -> None:
    if bundled_tritonserver() is None:
        require("tritonserver", False, "it comes with the nvidia-pytriton wheel: pip install 'versus[triton]' "
                "(the dev lock has it: make setup)")


@pytest.fixture(scope="module")
def held():
    from services.vit.builders import digits_splits

    return digits_splits()[1]


@pytest.fixture(scope="module")
def digits_export(vit_digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.vit.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("triton-export") / "vit-digits-onnx"
    export_onnx(vit_digits_dir, out)
    return out


@pytest.fixture(scope="module")
def repo(digits_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repo")
    write_repository(digits_export, out, RepoOptions(name="digits", platform="python", device="cpu",
                                                     max_batch_size=8, max_queue_delay_us=500, threads=1))
    return out


@pytest.fixture(scope="module")
def triton(repo: Path):
    needs_tritonserver()
    with LocalTriton(repo) as server:
        server.wait_ready(60, ("digits",))
        yield server


def triton_config(model_dir: Path, url: str, **kw: object):
    return vit_config(model_dir, backend="triton", triton_url=url, triton_model="digits", precision="auto",
                      max_images_per_request=64, **kw)


def classify(srv: InProcessServer, images: list, per_request: int = 20) -> list[vit_pb2.Classification]:
    with srv.channel() as ch:
        stub = vit_pb2_grpc.VitServiceStub(ch)
        out = []
        for start in range(0, len(images), per_request):
            request = vit_pb2.ClassifyRequest(images=[img(encode(i)) for i in images[start:start + per_request]],
                                              top_k=3, return_logits=True)
            out += list(stub.Classify(request, timeout=60).results)
    return out


@pytest.mark.slow
def test_triton_backend_matches_the_in_process_backends(triton: LocalTriton, digits_export: Path,
                                                        vit_digits_dir: Path, held) -> None:
    images = held.images[:40]
    reference = {}
    for name, cfg in (("torch", vit_config(vit_digits_dir, max_images_per_request=64)),
                      ("onnx", vit_config(digits_export, backend="onnx", max_images_per_request=64))):
        with InProcessServer(create_server, cfg) as srv:
            reference[name] = classify(srv, images)
    with InProcessServer(create_server, triton_config(digits_export, triton.url)) as srv, srv.channel() as ch:
        got = classify(srv, images)  # 20 images per request: Triton's max batch is 8, so requests are split
        stub = vit_pb2_grpc.VitServiceStub(ch)
        info = stub.GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=10)
        emb = stub.Embed(vit_pb2.EmbedRequest(images=[img(encode(i)) for i in images[:3]], layers=[2]), timeout=30)
        metrics = srv.metrics()
    for ref in reference.values():
        for a, b in zip(got, ref, strict=True):
            assert [lab.label for lab in a.labels] == [lab.label for lab in b.labels]
            assert np.abs(np.array(a.logits) - np.array(b.logits)).max() <= FP32_TOLERANCE
    assert (info.model.backend, info.model.device) == ("triton", f"triton:{triton.url}")
    assert info.model.precision == common_pb2.PRECISION_FP32 and info.num_labels == 10
    assert [len(r.embeddings[0].values) for r in emb.results] == [64, 64, 64]
    assert metric_sum(metrics, "versus_items_processed_total", model="vit-digits-onnx") == 43


def health_status(srv: InProcessServer) -> int:
    with srv.channel() as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def wait_health(srv: InProcessServer, status: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while health_status(srv) != status:
        assert time.monotonic() < deadline, f"health never became {status}"
        time.sleep(0.1)


@pytest.mark.slow
def test_triton_outage_is_unavailable_and_not_serving(repo: Path, digits_export: Path, held) -> None:
    needs_tritonserver()
    port = _free_port()
    image = [img(encode(held.images[0]))]
    with LocalTriton(repo, grpc_port=port) as first:
        cfg = triton_config(digits_export, first.url, triton_health_interval_s=0.2)
        srv = InProcessServer(create_server, cfg).__enter__()
        try:
            wait_health(srv, health_pb2.HealthCheckResponse.SERVING)
            first.stop()  # Triton goes away
            wait_health(srv, health_pb2.HealthCheckResponse.NOT_SERVING)
            with srv.channel() as ch, pytest.raises(grpc.RpcError) as down:
                vit_pb2_grpc.VitServiceStub(ch).Classify(vit_pb2.ClassifyRequest(images=image), timeout=10)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_details(down.value).reason == "TRITON_UNAVAILABLE"
            with LocalTriton(repo, grpc_port=port) as second:  # and comes back
                second.wait_ready(60, ("digits",))
                wait_health(srv, health_pb2.HealthCheckResponse.SERVING)
                with srv.channel() as ch:
                    reply = vit_pb2_grpc.VitServiceStub(ch).Classify(vit_pb2.ClassifyRequest(images=image), timeout=30)
                assert reply.results[0].labels[0].label == str(held.labels[0])
        finally:
            srv.__exit__(None, None, None)


def test_start_fails_when_triton_never_becomes_ready(digits_export: Path) -> None:
    cfg = triton_config(digits_export, f"127.0.0.1:{_free_port()}", triton_start_timeout_s=1.0)
    with pytest.raises(ModelLoadError, match="not ready after 1s"):
        with InProcessServer(create_server, cfg):
            pass


# -- units ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status, cls", [
    ("StatusCode.UNAVAILABLE", TritonUnavailable),
    ("StatusCode.NOT_FOUND", TritonUnavailable),
    ("StatusCode.INTERNAL", TritonUnavailable),
    (None, TritonUnavailable),
    ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded),
    ("StatusCode.CANCELLED", Cancelled),
    ("StatusCode.RESOURCE_EXHAUSTED", TritonBusy),
    ("StatusCode.INVALID_ARGUMENT", TritonRejected),
])
def test_triton_errors_map_to_the_service_errors(status: str | None, cls: type) -> None:
    err = triton_error(InferenceServerException("x" * 5000, status=status))
    assert type(err) is cls and len(err.message) < 400 and "Triton (" in err.message
    if cls is TritonBusy:
        assert err.retry_after_s is not None and err.retry_after_s > 0


def test_production_config_uses_onnxruntime_on_gpus_with_dynamic_batching() -> None:
    text = config_pbtxt(RepoOptions(max_batch_size=64, max_queue_delay_us=1500, instances=2), image_size=224,
                        num_labels=1000, tokens=197, hidden=768, layers=12, precision="fp32")
    for line in ('backend: "onnxruntime"', "max_batch_size: 64", "max_queue_delay_microseconds: 1500",
                 "count: 2 kind: KIND_GPU", 'name: "pixel_values" data_type: TYPE_FP32 dims: [ 3, 224, 224 ]',
                 'name: "hidden_states" data_type: TYPE_FP32 dims: [ 13, 197, 768 ]',
                 'key: "versus_precision" value { string_value: "fp32" }'):
        assert line in text
    pinned = config_pbtxt(RepoOptions(device="cuda:1"), image_size=224, num_labels=10, tokens=197, hidden=768,
                          layers=12, precision="fp32")
    assert "kind: KIND_GPU gpus: [ 1 ]" in pinned
    with pytest.raises(ConfigError, match="cpu, cuda or cuda:N"):
        RepoOptions(device="gpu0")


def test_the_python_platform_may_rename_the_input_and_onnxruntime_may_not() -> None:
    renamed = config_pbtxt(RepoOptions(platform="python", device="cpu", input_name="PIXELS"), image_size=32,
                           num_labels=10, tokens=65, hidden=64, layers=4, precision="fp32")
    assert 'input [ { name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] } ]' in renamed
    with pytest.raises(ConfigError, match="only the python platform renames it"):
        RepoOptions(platform="onnxruntime", input_name="PIXELS")
    with pytest.raises(ConfigError, match="input name"):
        RepoOptions(platform="python", device="cpu", input_name="a b")
