"""The Open Inference Protocol (KServe V2) on the vit service, driven by the stock ``tritonclient.grpc``
client (and by the protocol's own stub where a test needs a message tritonclient would not build).

One in-process server on the trained vit-digits model, with a bearer token: liveness and readiness
answer without it, everything else needs it, and errors carry the same ``google.rpc`` details as the
native API.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from conftest import InProcessServer, encode, metric_sum
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.client import error_details
from services.vit.config import VitConfig
from services.vit.server import create_server

TOKEN = "oip-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
METADATA = (("authorization", f"Bearer {TOKEN}"),)
DIGITS = 24  # held-out digits per batch test
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def held():
    from services.vit.builders import digits_splits

    return digits_splits()[1]


@pytest.fixture(scope="module")
def server(vit_digits_dir: Path):
    config = VitConfig.from_env({}, model=str(vit_digits_dir), port=0, metrics_port=0, host="127.0.0.1",
                                metrics_host="127.0.0.1", torch_threads=1, drain_delay_s=0.0, log_format="text",
                                precision="fp32", max_images_per_request=32, token=TOKEN)
    with InProcessServer(create_server, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: InProcessServer):
    with tc.InferenceServerClient(server.target) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: InProcessServer):
    with server.channel() as ch:
        yield service_pb2_grpc.GRPCInferenceServiceStub(ch)


def images_input(blobs: list[bytes]) -> tc.InferInput:
    inp = tc.InferInput("IMAGE", [len(blobs)], "BYTES")
    inp.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    return inp


def raw_request(model: str = "vit", **fields: object) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model, **fields)


def tensor(name: str, datatype: str, shape: list[int], **contents: object) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape,
                                                 contents=pb.InferTensorContents(**contents) if contents else None)


# -- metadata and probes -----------------------------------------------------------------------------
def test_server_and_model_metadata(client: tc.InferenceServerClient) -> None:
    server = client.get_server_metadata(headers=AUTH)
    assert server.name == "versus-vit" and "parameters" in server.extensions
    assert {"model_configuration", "statistics"} <= set(server.extensions)  # perf_analyzer's server stats need it
    vit = client.get_model_metadata("vit", headers=AUTH)
    assert vit.versions == ["1"] and vit.platform == "versus_vit"
    assert [(t.name, t.datatype, list(t.shape)) for t in vit.inputs] == [("IMAGE", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in vit.outputs] == [("PROBABILITIES", "FP32", [-1, 10]),
                                                                           ("LABELS", "BYTES", [-1, -1])]
    tensor_model = client.get_model_metadata("vit-tensor", headers=AUTH)
    assert [(t.name, t.datatype, list(t.shape)) for t in tensor_model.inputs] == [("PIXELS", "FP32", [-1, 3, 32, 32])]


def test_probes_are_open_and_everything_else_needs_the_token(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("vit") and client.is_model_ready("vit-tensor")
    assert not client.is_model_ready("no-such-model") and not client.is_model_ready("vit", "7")
    for call in (client.get_server_metadata, lambda: client.get_model_metadata("vit"),
                 lambda: client.infer("vit", [images_input([b"x"])]),
                 lambda: client.get_model_metadata("vit", headers={"authorization": "Bearer wrong"})):
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"


# -- inference ----------------------------------------------------------------------------------------
def test_digits_batch_argmax_equals_native_classify_top1(server: InProcessServer, client: tc.InferenceServerClient,
                                                         held) -> None:
    blobs = [encode(im) for im in held.images[:DIGITS]]
    result = client.infer("vit", [images_input(blobs)], headers=AUTH, request_id="batch-7")
    probabilities = result.as_numpy("PROBABILITIES")
    labels = result.as_numpy("LABELS")
    assert probabilities.shape == (DIGITS, 10) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert labels.shape == (DIGITS, 5)  # the server's default top_k
    assert result.get_response().id == "batch-7"
    with server.channel() as ch:
        native = vit_pb2_grpc.VitServiceStub(ch).Classify(
            vit_pb2.ClassifyRequest(images=[common_pb2.Image(data=b) for b in blobs], top_k=1), metadata=METADATA,
            timeout=60)
    native_top1 = [r.labels[0].index for r in native.results]
    assert probabilities.argmax(1).tolist() == native_top1
    assert [int(row[0].decode().split(":")[1]) for row in labels] == native_top1  # "<p>:<index>:<label>"
    assert np.mean(np.array(native_top1) == held.labels[:DIGITS]) >= 0.9


def test_tensor_model_equals_image_model(server: InProcessServer, client: tc.InferenceServerClient, held) -> None:
    blobs = [encode(im) for im in held.images[:8]]
    engine = server.server.backend.model
    pixels = np.stack([engine.preprocess(im.convert("RGB")) for im in held.images[:8]]).astype(np.float32)
    inp = tc.InferInput("PIXELS", list(pixels.shape), "FP32")
    inp.set_data_from_numpy(pixels)
    from_pixels = client.infer("vit-tensor", [inp], headers=AUTH).as_numpy("PROBABILITIES")
    from_images = client.infer("vit", [images_input(blobs)], headers=AUTH).as_numpy("PROBABILITIES")
    assert np.abs(from_pixels - from_images).max() < 1e-5


def test_typed_contents_equal_raw_contents(stub, held) -> None:
    blobs = [encode(im) for im in held.images[:3]]
    typed = stub.ModelInfer(raw_request(inputs=[tensor("IMAGE", "BYTES", [3], bytes_contents=blobs)]),
                            metadata=METADATA, timeout=30)
    raw = tc.InferInput("IMAGE", [3], "BYTES")
    raw.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    raw_reply = stub.ModelInfer(raw_request(inputs=[raw._get_tensor()], raw_input_contents=[raw._get_content()]),
                                metadata=METADATA, timeout=30)
    assert typed.raw_output_contents[0] == raw_reply.raw_output_contents[0]
    size = 3 * 32 * 32
    pixels = np.zeros((1, 3, 32, 32), np.float32).ravel().tolist()
    reply = stub.ModelInfer(raw_request("vit-tensor", inputs=[tensor("PIXELS", "FP32", [1, 3, 32, 32],
                                                                     fp32_contents=pixels)]),
                            metadata=METADATA, timeout=30)
    assert list(reply.outputs[0].shape) == [1, 10] and len(pixels) == size


def test_top_k_and_head_parameters(server: InProcessServer, client: tc.InferenceServerClient, held) -> None:
    blobs = [encode(im) for im in held.images[:4]]
    three = client.infer("vit", [images_input(blobs)], headers=AUTH, parameters={"top_k": 3})
    assert three.as_numpy("LABELS").shape == (4, 3)
    only = client.infer("vit", [images_input(blobs)], headers=AUTH, parameters={"top_k": 1},
                        outputs=[tc.InferRequestedOutput("LABELS")])
    assert only.as_numpy("PROBABILITIES") is None and only.as_numpy("LABELS").shape == (4, 1)
    examples = [vit_pb2.LabelledImage(image=common_pb2.Image(data=encode(im)), label="even" if y % 2 == 0 else "odd")
                for im, y in zip(held.images[:20], held.labels[:20], strict=True)]
    with server.channel() as ch:
        vit_pb2_grpc.VitServiceStub(ch).CreateHead(vit_pb2.CreateHeadRequest(name="parity", examples=examples),
                                                   metadata=METADATA, timeout=60)
    head = client.infer("vit", [images_input(blobs)], headers=AUTH, parameters={"head": "parity", "top_k": 2})
    assert head.as_numpy("PROBABILITIES").shape == (4, 2)
    assert {row[0].decode().split(":")[2] for row in head.as_numpy("LABELS")} <= {"even", "odd"}


def test_stream_answers_each_request_with_a_final_response(client: tc.InferenceServerClient, held) -> None:
    import queue

    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)), headers=AUTH)
    try:
        client.async_stream_infer("vit", [images_input([encode(held.images[0])])], request_id="s1")
        client.async_stream_infer("nope", [images_input([b"x"])], request_id="s2")
        first, error = results.get(timeout=30)
        assert error is None and first.get_response().id == "s1"
        assert first.get_response().parameters["triton_final_response"].bool_param
        assert first.as_numpy("PROBABILITIES").shape == (1, 10)
        _, error = results.get(timeout=30)
        assert "NOT_FOUND" in str(error)  # the stream reports the request's error and stays open
    finally:
        client.stop_stream()


# -- errors -------------------------------------------------------------------------------------------
PNG = b"\x89PNG\r\n\x1a\n"
ERRORS = {
    "wrong datatype": (raw_request(inputs=[tensor("IMAGE", "FP32", [1], fp32_contents=[1.0])]), INVALID, "IMAGE"),
    "wrong rank": (raw_request(inputs=[tensor("IMAGE", "BYTES", [1, 1], bytes_contents=[PNG])]), INVALID, "IMAGE"),
    "shape and data disagree": (raw_request(inputs=[tensor("IMAGE", "BYTES", [3], bytes_contents=[PNG, PNG])]),
                                INVALID, "IMAGE"),
    "negative dimension": (raw_request(inputs=[tensor("IMAGE", "BYTES", [-1], bytes_contents=[PNG])]),
                           INVALID, "IMAGE"),
    "not an image": (raw_request(inputs=[tensor("IMAGE", "BYTES", [1], bytes_contents=[b"text"])]),
                     INVALID, "IMAGE[0]"),
    "too many images": (raw_request(inputs=[tensor("IMAGE", "BYTES", [33], bytes_contents=[PNG] * 33)]),
                        INVALID, "IMAGE"),
    "unknown input": (raw_request(inputs=[tensor("PICTURE", "BYTES", [1], bytes_contents=[PNG])]),
                      INVALID, "PICTURE"),
    "missing input": (raw_request(), INVALID, "IMAGE"),
    "input twice": (raw_request(inputs=[tensor("IMAGE", "BYTES", [1], bytes_contents=[PNG])] * 2), INVALID, "IMAGE"),
    "raw BYTES not length-prefixed": (raw_request(inputs=[tensor("IMAGE", "BYTES", [1])],
                                                  raw_input_contents=[b"\xff\xff\xff\x7fab"]), INVALID, "IMAGE"),
    "raw entries and inputs disagree": (raw_request(inputs=[tensor("IMAGE", "BYTES", [1])],
                                                    raw_input_contents=[b"", b""]), INVALID, "raw_input_contents"),
    "wrong image size": (raw_request("vit-tensor", inputs=[tensor("PIXELS", "FP32", [1, 3, 8, 8],
                                                                  fp32_contents=[0.0] * 192)]), INVALID, "PIXELS"),
    "raw FP32 of odd length": (raw_request("vit-tensor", inputs=[tensor("PIXELS", "FP32", [1, 3, 32, 32])],
                                           raw_input_contents=[b"\0" * 7]), INVALID, "PIXELS"),
    "not finite": (raw_request("vit-tensor", inputs=[tensor("PIXELS", "FP32", [1, 3, 32, 32],
                                                            fp32_contents=[float("nan")] * 3072)]), INVALID, "PIXELS"),
    "unknown output": (raw_request(inputs=[tensor("IMAGE", "BYTES", [1], bytes_contents=[PNG])],
                                   outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="LOGITS")]),
                       INVALID, "LOGITS"),
    "top_k out of range": (raw_request(inputs=[tensor("IMAGE", "BYTES", [1], bytes_contents=[PNG])],
                                       parameters={"top_k": pb.InferParameter(int64_param=11)}), INVALID, "top_k"),
    "top_k not an integer": (raw_request(inputs=[tensor("IMAGE", "BYTES", [1], bytes_contents=[PNG])],
                                         parameters={"top_k": pb.InferParameter(string_param="3")}),
                             INVALID, "parameters.top_k"),
    "unknown head": (raw_request(inputs=[tensor("IMAGE", "BYTES", [1], bytes_contents=[PNG])],
                                 parameters={"head": pb.InferParameter(string_param="nope")}), NOT_FOUND, ""),
    "unknown model": (raw_request("resnet"), NOT_FOUND, ""),
    "unknown version": (raw_request(model_version="2"), NOT_FOUND, ""),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_carry_status_and_details(case: str, stub) -> None:
    request, code, field = ERRORS[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, metadata=METADATA, timeout=30)
    details = error_details(info.value)
    assert details.code == code, details.message
    assert details.domain == "versus" and details.reason
    if code == INVALID:
        assert details.violations[0][0] == field
    else:
        assert details.resource_type in ("model", "head")


def test_unknown_model_through_tritonclient(client: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("resnet", headers=AUTH)
    assert info.value.status() == "StatusCode.NOT_FOUND" and "resnet" in info.value.message()


def test_protocol_calls_share_the_native_metrics_and_batcher(server: InProcessServer,
                                                             client: tc.InferenceServerClient, held) -> None:
    before = server.metrics()
    client.infer("vit", [images_input([encode(im) for im in held.images[:5]])], headers=AUTH)
    after = server.metrics()
    handled = 'grpc_server_handled_total'
    labels = {"grpc_service": "inference.GRPCInferenceService", "grpc_method": "ModelInfer", "grpc_code": "OK"}
    assert metric_sum(after, handled, **labels) == metric_sum(before, handled, **labels) + 1
    assert metric_sum(after, "versus_items_processed_total") >= metric_sum(before, "versus_items_processed_total") + 5


# -- ModelConfig and ModelStatistics ---------------------------------------------------------------
def test_model_config_describes_the_batched_models(server: InProcessServer, client: tc.InferenceServerClient) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = server.config
    vit = client.get_model_config("vit", headers=AUTH).config
    assert (vit.name, vit.platform, vit.backend) == ("vit", "versus_vit", cfg.backend)
    assert vit.max_batch_size == cfg.max_images_per_request == 32
    # Triton's convention: dims leave out the batch dimension; a per-image scalar is [1] reshaped to [].
    assert [(t.name, t.data_type, list(t.dims), list(t.reshape.shape)) for t in vit.input] == [
        ("IMAGE", mc.TYPE_STRING, [1], [])]
    assert vit.input[0].HasField("reshape")
    assert [(t.name, t.data_type, list(t.dims)) for t in vit.output] == [("PROBABILITIES", mc.TYPE_FP32, [10]),
                                                                          ("LABELS", mc.TYPE_STRING, [-1])]
    assert list(vit.dynamic_batching.preferred_batch_size) == [cfg.max_batch_size]
    assert vit.dynamic_batching.max_queue_delay_microseconds == int(cfg.max_wait_ms * 1000)
    pixels = client.get_model_config("vit-tensor", headers=AUTH).config
    assert [(t.name, t.data_type, list(t.dims)) for t in pixels.input] == [("PIXELS", mc.TYPE_FP32, [3, 32, 32])]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config("resnet", headers=AUTH)
    assert info.value.status() == "StatusCode.NOT_FOUND"


def _stats(client: tc.InferenceServerClient, model: str):
    (only,) = client.get_inference_statistics(model, headers=AUTH).model_stats
    return only


def test_statistics_count_requests_phases_and_batches(client: tc.InferenceServerClient, held) -> None:
    before = _stats(client, "vit")
    client.infer("vit", [images_input([encode(im) for im in held.images[:5]])], headers=AUTH)
    with pytest.raises(InferenceServerException):
        client.infer("vit", [images_input([b"not an image"])], headers=AUTH)
    after = _stats(client, "vit")
    b, a = before.inference_stats, after.inference_stats
    assert (after.name, after.version) == ("vit", "1")
    assert a.success.count == b.success.count + 1 and a.success.ns > b.success.ns
    assert a.fail.count == b.fail.count + 1
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(a, phase).count == getattr(b, phase).count + 1, phase
    assert a.compute_infer.ns > b.compute_infer.ns and a.compute_input.ns > b.compute_input.ns
    assert a.success.ns - b.success.ns >= a.compute_infer.ns - b.compute_infer.ns
    assert after.inference_count == before.inference_count + 5
    assert after.execution_count >= before.execution_count + 1
    assert sum(s.compute_infer.count for s in after.batch_stats) == after.execution_count
    assert after.last_inference > 0 and after.last_inference >= before.last_inference
    models = {m.name for m in client.get_inference_statistics(headers=AUTH).model_stats}
    assert models == {"vit", "vit-tensor"}
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("resnet", headers=AUTH)
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_count_a_refused_input_as_failed(stub) -> None:
    def fails() -> int:
        return stub.ModelStatistics(pb.ModelStatisticsRequest(name="vit-tensor"), metadata=METADATA,
                                    timeout=10).model_stats[0].inference_stats.fail.count

    before = fails()
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(ERRORS["wrong image size"][0], metadata=METADATA, timeout=30)
    assert fails() == before + 1


# -- RPCs the server does not offer -------------------------------------------------------------------
#: What docs/OIP.md says the servers answer; every other RPC of the service must be UNIMPLEMENTED.
SERVED = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
          "ModelStreamInfer", "ModelConfig", "ModelStatistics"}
OIP_METHODS = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
UNSERVED = [m for m in OIP_METHODS if m.name not in SERVED]


def test_the_protocol_has_rpcs_we_do_not_serve() -> None:
    assert {"RepositoryIndex", "SystemSharedMemoryRegister", "CudaSharedMemoryStatus", "TraceSetting",
            "LogSettings"} <= {m.name for m in UNSERVED}


@pytest.mark.parametrize("method", UNSERVED, ids=lambda m: m.name)
def test_unserved_rpc_answers_unimplemented_and_is_counted_so(method, server: InProcessServer) -> None:
    from google.protobuf import message_factory

    request_cls = message_factory.GetMessageClass(method.input_type)
    labels = {"grpc_service": "inference.GRPCInferenceService", "grpc_method": method.name}
    before = server.metrics()
    with server.channel() as ch:
        call = ch.unary_unary(f"/inference.GRPCInferenceService/{method.name}",
                              request_serializer=request_cls.SerializeToString)
        with pytest.raises(grpc.RpcError) as info:
            call(request_cls(), metadata=METADATA, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, info.value.details()
    assert method.name in info.value.details()
    details = error_details(info.value)
    assert details.reason == "UNIMPLEMENTED" and details.domain == "versus"
    handled = "grpc_server_handled_total"
    # The server counts the call once its handler has returned, which may be just after the client has the status.
    deadline = time.monotonic() + 10
    while metric_sum(after := server.metrics(), handled, **labels, grpc_code="UNIMPLEMENTED") == metric_sum(
            before, handled, **labels, grpc_code="UNIMPLEMENTED") and time.monotonic() < deadline:
        time.sleep(0.05)
    for code, more in (("UNIMPLEMENTED", 1), ("INTERNAL", 0)):
        assert metric_sum(after, handled, **labels, grpc_code=code) == metric_sum(before, handled, **labels,
                                                                                 grpc_code=code) + more


def test_rest_is_off_unless_asked(server: InProcessServer) -> None:
    assert server.config.http_port == -1 and server.server.http_port == -1 and not server.server.listeners
