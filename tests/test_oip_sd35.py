"""The Open Inference Protocol on the SD3.5 service (tiny pipelines, random weights), with the stock
``tritonclient.grpc`` client: metadata of the hosted variants, seeded determinism, defaults as in the
native API, Triton's decoupled stream (progress, then the image with ``triton_final_response``), and
errors naming the input."""

from __future__ import annotations

import io
import queue
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from conftest import InProcessServer
from PIL import Image
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc

from services.common.client import error_details
from services.sd35.config import Sd35Config
from services.sd35.server import create_server

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def server(sd35_dirs: dict[str, Path]):
    config = Sd35Config.from_env({}, models=tuple(f"{v}={p}" for v, p in sd35_dirs.items()), port=0, metrics_port=0,
                                 http_port=0,
                                 host="127.0.0.1", metrics_host="127.0.0.1", drain_delay_s=0.0, log_format="text",
                                 torch_threads=1, default_size=128)
    with InProcessServer(create_server, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: InProcessServer):
    with tc.InferenceServerClient(server.target) as c:
        yield c


def inputs(prompt: str | bytes = "a photo of a cat", **optional: object) -> list[tc.InferInput]:
    """PROMPT plus optional inputs, each of shape [1] (datatype from the value's kind unless given)."""
    kinds = {"NEGATIVE_PROMPT": "BYTES", "SEED": "INT64", "STEPS": "INT32", "WIDTH": "INT32", "HEIGHT": "INT32",
             "GUIDANCE": "FP32"}
    out = []
    for name, value in {"PROMPT": prompt, **optional}.items():
        datatype = kinds.get(name, "BYTES")
        if isinstance(value, tuple):  # (datatype, value): a deliberately wrong datatype
            datatype, value = value
        inp = tc.InferInput(name, [1], datatype)
        dtype = {"BYTES": np.object_, "INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP64": np.float64}
        inp.set_data_from_numpy(np.array([value.encode() if isinstance(value, str) else value], dtype[datatype]))
        out.append(inp)
    return out


def small(**kw: object) -> dict[str, object]:
    return {"WIDTH": 64, "HEIGHT": 64, "STEPS": 3, "SEED": 42} | kw


def test_metadata_lists_the_hosted_variants(client: tc.InferenceServerClient) -> None:
    for name in ("sd35-large", "sd35-large-turbo", "sd35-medium"):
        meta = client.get_model_metadata(name)
        assert meta.platform == "versus_sd35" and client.is_model_ready(name)
        assert [(t.name, t.datatype) for t in meta.inputs][:3] == [("PROMPT", "BYTES"), ("NEGATIVE_PROMPT", "BYTES"),
                                                                   ("SEED", "INT64")]
        assert {t.name: t.datatype for t in meta.outputs}["IMAGE"] == "BYTES"
    assert client.get_server_metadata().name == "versus-sd35"


def test_fixed_seed_gives_byte_identical_pngs_equal_to_generate(server: InProcessServer,
                                                                 client: tc.InferenceServerClient) -> None:
    a = client.infer("sd35-large", inputs(**small()), request_id="gen-1")
    b = client.infer("sd35-large", inputs(**small()))
    other = client.infer("sd35-large", inputs(**small(SEED=7)))
    png = a.as_numpy("IMAGE")[0]
    assert png == b.as_numpy("IMAGE")[0] and png != other.as_numpy("IMAGE")[0]
    assert Image.open(io.BytesIO(png)).format == "PNG" and Image.open(io.BytesIO(png)).size == (64, 64)
    assert a.as_numpy("SEED").tolist() == [42] and a.get_response().id == "gen-1"
    with server.channel() as ch:
        native = list(sd35_pb2_grpc.Sd35ServiceStub(ch).Generate(sd35_pb2.GenerateRequest(
            prompt="a photo of a cat", variant=sd35_pb2.VARIANT_LARGE, width=64, height=64, steps=3, seed=42),
            timeout=60))
    assert native[-1].result.images[0].data == png


def stream(client: tc.InferenceServerClient, *requests: tuple[str, list[tc.InferInput], str],
           finals: int) -> tuple[list[tuple[str, tc.InferResult]], list[str]]:
    """Send ``requests`` (model, inputs, id) on one stream; collect responses until ``finals`` final ones."""
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    responses, errors = [], []
    try:
        for model, inp, request_id in requests:
            client.async_stream_infer(model, inp, request_id=request_id)
        while sum(r.get_response().parameters["triton_final_response"].bool_param for _, r in responses) < finals:
            result, error = results.get(timeout=60)
            if error is not None:
                errors.append(str(error))
            else:
                responses.append((result.get_response().id, result))
    finally:
        client.stop_stream()
    return responses, errors


def test_defaults_are_the_native_apis(client: tc.InferenceServerClient) -> None:
    """Turbo's 4 steps, and the variant's default size, when the inputs are left out."""
    turbo = client.infer("sd35-large-turbo", inputs(SEED=1))
    assert Image.open(io.BytesIO(turbo.as_numpy("IMAGE")[0])).size == (128, 128)
    responses, _ = stream(client, ("sd35-large-turbo", inputs(SEED=1, WIDTH=64, HEIGHT=64), "t"), finals=1)
    assert {int(r.as_numpy("TOTAL")[0]) for _, r in responses[:-1]} == {4}


def test_stream_reports_progress_then_the_final_image(client: tc.InferenceServerClient) -> None:
    responses, errors = stream(client, ("sd35-large", inputs(**small(STEPS=5)), "s1"),
                               ("sd35-large", inputs(**small(WIDTH=65)), "bad"),
                               ("sd35-large", inputs(**small(STEPS=2)), "s2"), finals=2)
    assert len(errors) == 1 and "INVALID_ARGUMENT" in errors[0] and "WIDTH" in errors[0]  # the stream went on
    assert [i for i, _ in responses].count("s1") >= 2 and responses[-1][0] == "s2"
    for request_id, r in responses:
        final = r.get_response().parameters["triton_final_response"].bool_param
        assert final == (r.as_numpy("IMAGE") is not None)
        if not final:
            assert 1 <= r.as_numpy("STEP")[0] <= r.as_numpy("TOTAL")[0] == (5 if request_id == "s1" else 2)
    last_s1 = [r for i, r in responses if i == "s1"][-1]
    plain = client.infer("sd35-large", inputs(**small(STEPS=5)))
    assert last_s1.as_numpy("IMAGE")[0] == plain.as_numpy("IMAGE")[0]


ERRORS = {
    "STEPS as INT64": ({"STEPS": ("INT64", 4)}, "STEPS"),
    "GUIDANCE as FP64": ({"GUIDANCE": ("FP64", 1.0)}, "GUIDANCE"),
    "WIDTH not a multiple of 16": ({"WIDTH": 65}, "WIDTH"),
    "too many steps": ({"STEPS": 1000}, "STEPS"),
    "negative seed": ({"SEED": -1}, "SEED"),
    "guidance out of range": ({"GUIDANCE": 99.0}, "GUIDANCE"),
    "empty prompt": ({"PROMPT": ""}, "PROMPT"),
    "prompt not UTF-8": ({"PROMPT": b"\xff\xfe"}, "PROMPT"),
    "over-long negative prompt": ({"NEGATIVE_PROMPT": "x" * 100_000}, "NEGATIVE_PROMPT"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_inputs_are_invalid_argument_naming_the_input(case: str, server: InProcessServer) -> None:
    optional, field = ERRORS[case]
    prompt = optional.pop("PROMPT", "a cat") if "PROMPT" in optional else "a cat"
    request = pb.ModelInferRequest(model_name="sd35-large")
    for inp in inputs(prompt, **(small() | optional)):
        request.inputs.append(inp._get_tensor())
        request.raw_input_contents.append(inp._get_content())
    with server.channel() as ch, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=60)
    details = error_details(info.value)
    assert details.code == INVALID and details.violations[0][0] == field, details.message


def test_missing_prompt_and_unknown_model(client: tc.InferenceServerClient) -> None:
    seed = tc.InferInput("SEED", [1], "INT64")
    seed.set_data_from_numpy(np.array([1], np.int64))
    with pytest.raises(InferenceServerException) as info:
        client.infer("sd35-large", [seed])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "PROMPT" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("sd35-xl", inputs())
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_model_config_and_statistics(client: tc.InferenceServerClient) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    config = client.get_model_config("sd35-large").config
    assert (config.name, config.platform, config.backend, config.max_batch_size) == ("sd35-large", "versus_sd35",
                                                                                      "diffusers", 0)
    assert not config.HasField("dynamic_batching")  # one generation per device run
    declared = {t.name: (t.data_type, list(t.dims), t.optional) for t in config.input}
    assert declared["PROMPT"] == (mc.TYPE_STRING, [1], False) and declared["SEED"] == (mc.TYPE_INT64, [1], True)
    assert declared["GUIDANCE"] == (mc.TYPE_FP32, [1], True)
    assert {t.name: t.data_type for t in config.output}["IMAGE"] == mc.TYPE_STRING

    (before,) = client.get_inference_statistics("sd35-large").model_stats
    client.infer("sd35-large", inputs(**small(STEPS=2)))
    with pytest.raises(InferenceServerException):
        client.infer("sd35-large", inputs(**small(STEPS=("FP32", 2.0))))
    (after,) = client.get_inference_statistics("sd35-large").model_stats
    b, a = before.inference_stats, after.inference_stats
    assert a.success.count == b.success.count + 1 and a.fail.count == b.fail.count + 1
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(a, phase).count == getattr(b, phase).count + 1, phase
        assert getattr(a, phase).ns > getattr(b, phase).ns or phase == "queue", phase
    assert a.success.ns - b.success.ns >= a.compute_infer.ns - b.compute_infer.ns > 0
    assert (after.inference_count, after.execution_count) == (before.inference_count + 1, before.execution_count + 1)
    assert [(s.batch_size, s.compute_infer.count) for s in after.batch_stats] == [(1, after.execution_count)]


def test_rest_infer_equals_grpc_and_sends_the_png_as_binary(server: InProcessServer,
                                                           client: tc.InferenceServerClient) -> None:
    """Over REST (tritonclient.http) the seeded image is byte-identical to the gRPC one; a PNG cannot be a
    JSON string, so IMAGE comes back as binary data even when the request asks for JSON."""
    import tritonclient.http as tch

    expected = client.infer("sd35-large", inputs(**small()))
    rest = tch.InferenceServerClient(f"127.0.0.1:{server.server.http_port}")
    try:
        prompt = tch.InferInput("PROMPT", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([b"a photo of a cat"], np.object_), binary_data=False)
        numbers = []
        for name, value, datatype, dtype in (("WIDTH", 64, "INT32", np.int32), ("HEIGHT", 64, "INT32", np.int32),
                                             ("STEPS", 3, "INT32", np.int32), ("SEED", 42, "INT64", np.int64)):
            inp = tch.InferInput(name, [1], datatype)
            inp.set_data_from_numpy(np.array([value], dtype))
            numbers.append(inp)
        result = rest.infer("sd35-large", [prompt, *numbers],
                            outputs=[tch.InferRequestedOutput("IMAGE", binary_data=False),
                                     tch.InferRequestedOutput("SEED", binary_data=False)])
        assert result.as_numpy("IMAGE")[0] == expected.as_numpy("IMAGE")[0]
        assert "binary_data_size" in result.get_output("IMAGE")["parameters"]
        assert result.get_output("SEED")["data"] == [42]
        config = rest.get_model_config("sd35-large")
        assert config["max_batch_size"] == 0 and config["backend"] == "diffusers"
    finally:
        rest.close()
