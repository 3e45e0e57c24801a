"""Unit tests of the Open Inference Protocol converter (services/common/oip.py): no server, no model."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import InferResult
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from services.common.errors import InvalidArgument, NotFound
from services.common.oip import (
    ModelRepository,
    OipModel,
    Tensor,
    TensorSpec,
    bytes_tensor,
    decode_tensor,
)

NUMERIC = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
           "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "FP32": np.float32,
           "FP64": np.float64}
FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
         "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
         "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


def proto(name: str, datatype: str, shape: list[int], **contents: object) -> pb.ModelInferRequest.InferInputTensor:
    t = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        t.contents.CopyFrom(pb.InferTensorContents(**contents))
    return t


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_typed_and_raw_contents_decode_alike(datatype: str) -> None:
    data = (np.arange(6) % 2).astype(NUMERIC[datatype]).reshape(2, 3)
    spec = TensorSpec("X", datatype, (-1, 3))
    typed = decode_tensor(proto("X", datatype, [2, 3], **{FIELD[datatype]: data.ravel().tolist()}), spec, None)
    raw = decode_tensor(proto("X", datatype, [2, 3]), spec, data.tobytes())
    for t in (typed, raw):
        assert t.data.dtype == NUMERIC[datatype] and t.data.shape == (2, 3) and np.array_equal(t.data, data)


def test_bytes_typed_and_raw_and_fp16_raw_only() -> None:
    spec = TensorSpec("B", "BYTES", (-1,))
    values = [b"", b"a\x00b", "é".encode()]
    typed = decode_tensor(proto("B", "BYTES", [3], bytes_contents=values), spec, None)
    raw = decode_tensor(proto("B", "BYTES", [3]), spec, serialize_byte_tensor(np.array(values, np.object_)).item())
    assert list(typed.data) == list(raw.data) == values
    half = TensorSpec("H", "FP16", (2,))
    assert decode_tensor(proto("H", "FP16", [2]), half, np.array([1, 2], np.float16).tobytes()).data.tolist() == [1, 2]
    with pytest.raises(InvalidArgument, match="raw_input_contents"):
        decode_tensor(proto("H", "FP16", [2], fp32_contents=[1.0, 2.0]), half, None)


@pytest.mark.parametrize(("tensor", "raw", "problem"), [
    (proto("X", "INT8", [1], int_contents=[300]), None, "out of range"),
    (proto("X", "INT8", [2], int_contents=[1]), None, "needs 2 elements"),
    (proto("X", "INT8", [1]), b"\x01\x02", "needs 1 elements"),
    (proto("X", "INT16", [1], int_contents=[1]), None, "datatype"),
    (proto("X", "INT8", [1, 1], int_contents=[1]), None, "shape"),
    (proto("X", "INT8", [-2], int_contents=[1]), None, "shape"),
    (proto("X", "INT8", [1], int_contents=[1]), b"\x01", "not both"),
])
def test_bad_tensors_name_the_input(tensor, raw, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem) as info:
        decode_tensor(tensor, TensorSpec("X", "INT8", (-1,)), raw)
    assert info.value.field == "X"


def test_raw_bytes_must_be_whole_elements() -> None:
    with pytest.raises(InvalidArgument, match="whole number"):
        decode_tensor(proto("X", "INT32", [1]), TensorSpec("X", "INT32", (-1,)), b"\x01\x02\x03")


def test_huge_declared_shape_is_refused_without_allocating() -> None:
    with pytest.raises(InvalidArgument, match="needs"):
        decode_tensor(proto("X", "FP32", [2**40, 2**40], fp32_contents=[1.0]), TensorSpec("X", "FP32", (-1, -1)), None)


class Echo(OipModel):
    name, platform = "echo", "test"
    inputs = (TensorSpec("IN", "INT32", (-1,)), TensorSpec("OPT", "BYTES", (1,), optional=True))
    outputs = (TensorSpec("OUT", "INT32", (-1,)), TensorSpec("TEXT", "BYTES", (-1, -1)))

    def ready(self) -> bool:
        return True

    async def infer(self, request, timeout_s):  # noqa: ANN001, ANN201
        return [Tensor("OUT", "INT32", request.inputs["IN"].data * 2), bytes_tensor("TEXT", [[b"a", b"bc"]])]


def test_repository_round_trip_through_tritonclients_reader() -> None:
    import asyncio

    repo = ModelRepository("srv", "1.0", [Echo()])
    request = pb.ModelInferRequest(model_name="echo", id="r1", parameters={"k": pb.InferParameter(int64_param=4)},
                                   inputs=[proto("IN", "INT32", [3], int_contents=[1, 2, 3])])
    model, domain = repo.decode(request)
    assert domain.int_parameter("k") == 4 and domain.scalar("OPT") is None
    response = repo.encode(domain, asyncio.run(model.infer(domain, None)), final=True)
    result = InferResult(response)
    assert result.as_numpy("OUT").tolist() == [2, 4, 6]
    assert result.as_numpy("TEXT").tolist() == [[b"a", b"bc"]]
    assert response.id == "r1" and response.parameters["triton_final_response"].bool_param
    only = pb.ModelInferRequest(model_name="echo", inputs=request.inputs, outputs=[{"name": "TEXT"}])
    encoded = repo.encode(repo.decode(only)[1], asyncio.run(model.infer(domain, None)))
    assert [o.name for o in encoded.outputs] == ["TEXT"]


def test_repository_refusals() -> None:
    repo = ModelRepository("srv", "1.0", [Echo()])
    with pytest.raises(NotFound):
        repo.model_metadata("nope")
    with pytest.raises(NotFound):
        repo.model("echo", "2")
    assert not repo.model_ready("nope") and repo.model_ready("echo", "1")
    with pytest.raises(InvalidArgument, match="required") as info:
        repo.decode(pb.ModelInferRequest(model_name="echo"))
    assert info.value.field == "IN"
    bad_param = pb.ModelInferRequest(model_name="echo", inputs=[proto("IN", "INT32", [1], int_contents=[1])],
                                     parameters={"k": pb.InferParameter(bool_param=True)})
    with pytest.raises(InvalidArgument, match="integer"):
        repo.decode(bad_param)[1].int_parameter("k")


def test_statistics_count_a_shared_compute_batch_once() -> None:
    from services.common.oip_info import Batch, ModelStats, Phases

    stats = ModelStats()
    shared = Batch(id=7, size=2, compute_s=0.5)
    stats.phases(Phases(1, 0.1, 0.0, 0.5, 0.0, (shared,)))
    stats.phases(Phases(1, 0.2, 0.0, 0.5, 0.0, (shared, Batch(id=8, size=1, compute_s=0.25))))
    proto = stats.proto("m", "1")
    assert (proto.inference_count, proto.execution_count) == (2, 2)
    assert [(b.batch_size, b.compute_infer.count, b.compute_infer.ns) for b in proto.batch_stats] == [
        (1, 1, 250_000_000), (2, 1, 500_000_000)]
    assert (proto.inference_stats.queue.count, proto.inference_stats.queue.ns) == (2, 300_000_000)


# -- REST bodies (services/common/oip_json.py) and REST errors (services/common/oip_rest.py) ---------------
def test_rest_mixed_json_and_binary_inputs_decode_like_grpc() -> None:
    import json

    from services.common.oip_json import parse_infer

    images = np.array([b"\x89PNG", b"x\x00y"], np.object_)
    blob = serialize_byte_tensor(images).item()
    header = json.dumps({"id": "r1", "inputs": [
        {"name": "A", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(blob)}},
        {"name": "B", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}],
        "parameters": {"top_k": 3, "binary_data_output": True, "timeout": 2_000_000}}).encode()
    rest = parse_infer(header + blob, str(len(header)), "m", "")
    assert rest.binary_default and rest.timeout_s == 2.0 and rest.request.id == "r1"
    assert len(rest.request.raw_input_contents) == 2 and not rest.request.inputs[1].HasField("contents")
    assert "binary_data_output" not in rest.request.parameters and rest.request.parameters["top_k"].int64_param == 3

    class Model(OipModel):
        name, platform = "m", "test"
        inputs = (TensorSpec("A", "BYTES", (-1,)), TensorSpec("B", "INT32", (2, 2)))
        outputs = ()

        def ready(self) -> bool:
            return True

        async def infer(self, request, timeout_s):
            return []

    _, domain = ModelRepository("s", "1", [Model()]).decode(rest.request)
    assert list(domain.inputs["A"].data) == list(images)
    assert domain.inputs["B"].data.tolist() == [[1, 2], [3, 4]] and domain.inputs["B"].data.dtype == np.int32


def test_rest_outputs_are_json_unless_asked_binary_or_not_utf8() -> None:
    import json

    from services.common.oip import encode_tensor
    from services.common.oip_json import RestInfer, infer_body

    response = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    for tensor in (Tensor("P", "FP32", np.array([[0.25, 0.75]], np.float32)), bytes_tensor("L", [b"0.75:1:cat"]),
                   bytes_tensor("IMG", [b"\x89PNG\xff"])):
        meta, raw = encode_tensor(tensor)
        response.outputs.append(meta)
        response.raw_output_contents.append(raw)
    body, header_length = infer_body(response, RestInfer(pb.ModelInferRequest(), {"L": True}, False, None))
    assert header_length is not None
    header = json.loads(body[:header_length])
    outputs = {o["name"]: o for o in header["outputs"]}
    assert outputs["P"]["data"] == [0.25, 0.75] and outputs["P"]["shape"] == [1, 2]
    assert "data" not in outputs["L"] and "data" not in outputs["IMG"]  # asked binary / a PNG is not UTF-8
    sizes = [outputs[n]["parameters"]["binary_data_size"] for n in ("L", "IMG")]
    assert len(body) == header_length + sum(sizes) and header["id"] == "r"


@pytest.mark.parametrize(("error", "status"), [
    ("InvalidArgument('x', 'bad')", 400), ("NotFound('no model')", 404), ("Unauthenticated('token')", 401),
    ("ResourceExhausted('full', retry_after_s=1.5)", 429), ("Unavailable('loading')", 503),
    ("DeadlineExceeded('late')", 504), ("Unimplemented('no')", 501), ("FailedPrecondition('no head')", 400),
    ("ValueError('a bug')", 500), ("MessageTooLarge('request', 'too big')", 413),
])
def test_rest_error_bodies_carry_the_status_and_details(error: str, status: int) -> None:
    import json

    from services.common import errors
    from services.common.calls import MessageTooLarge
    from services.common.oip_rest import error_response
    from services.common.status import status_for

    exc = eval(error, {**vars(errors), "MessageTooLarge": MessageTooLarge})  # noqa: S307 - test table
    response = error_response(exc, status_for(exc), "rid-1")
    body = json.loads(response.body)
    assert response.status == status and body["request_id"] == "rid-1" and body["error"]
    assert body["code"] == status_for(exc).name
    if status == 500:
        assert "a bug" not in body["error"] and body["reason"] == "INTERNAL"
    if status == 429:
        assert response.headers["Retry-After"] == "2" and body["retry_after_s"] == 1.5
    if status == 400 and "InvalidArgument" in error:
        assert body["violations"] == [{"field": "x", "description": "bad"}]


@pytest.mark.parametrize("port", [-2, 65536])
def test_http_port_out_of_range_names_flag_and_env(port: int) -> None:
    from services.common.errors import ConfigError
    from services.sd35.config import Sd35Config

    with pytest.raises(ConfigError, match=r"--http-port \(SD35_HTTP_PORT\)"):
        Sd35Config.from_env({}, http_port=port)
