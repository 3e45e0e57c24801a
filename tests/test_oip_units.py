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
