"""The Open Inference Protocol over HTTP/REST on the vit service, driven by the stock ``tritonclient.http``
client (and by raw HTTP where a test sends what tritonclient would not: hostile bodies and names).

One in-process server on the trained vit-digits model, gRPC and REST on two ports, a bearer token and a
1 MiB message limit: the REST answers must equal the gRPC ones (one dataplane), and every refusal must
come back as the protocol's JSON error with the right HTTP status, never a 500.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tcg
import tritonclient.http as tch
from conftest import InProcessServer, encode, metric_sum
from tritonclient.utils import InferenceServerException

from services.vit.config import VitConfig
from services.vit.server import create_server

TOKEN = "rest-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}  # tritonclient.http adds headers to the dict it gets: pass copies
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def held():
    from services.vit.builders import digits_splits

    return digits_splits()[1]


@pytest.fixture(scope="module")
def server(vit_digits_dir: Path):
    config = VitConfig.from_env({}, model=str(vit_digits_dir), port=0, http_port=0, metrics_port=0, host="127.0.0.1",
                                metrics_host="127.0.0.1", torch_threads=1, drain_delay_s=0.0, log_format="text",
                                precision="fp32", max_images_per_request=32, token=TOKEN, max_message_bytes=LIMIT)
    with InProcessServer(create_server, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def url(server: InProcessServer) -> str:
    assert server.server.http_port > 0
    return f"127.0.0.1:{server.server.http_port}"


@pytest.fixture(scope="module")
def client(url: str):
    c = tch.InferenceServerClient(url)
    yield c
    c.close()


def images(blobs: list[bytes], binary: bool = True) -> tch.InferInput:
    inp = tch.InferInput("IMAGE", [len(blobs)], "BYTES")
    inp.set_data_from_numpy(np.array(blobs, dtype=np.object_), binary_data=binary)
    return inp


def raw(url: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request, whatever the status: (status, headers, body)."""
    request = urllib.request.Request(f"http://{url}{path}", data=body, method=method,
                                     headers={**AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# -- probes, metadata, config, statistics ------------------------------------------------------------
def test_probes_are_open_and_everything_else_needs_the_token(url: str) -> None:
    anonymous = tch.InferenceServerClient(url)
    try:
        assert anonymous.is_server_live() and anonymous.is_server_ready()
        assert anonymous.is_model_ready("vit") and anonymous.is_model_ready("vit-tensor", "1")
        assert not anonymous.is_model_ready("no-such-model") and not anonymous.is_model_ready("vit", "7")
        for call in (anonymous.get_server_metadata, lambda: anonymous.get_model_metadata("vit"),
                     lambda: anonymous.get_model_config("vit"), lambda: anonymous.get_inference_statistics(),
                     lambda: anonymous.infer("vit", [images([b"x"])]),
                     lambda: anonymous.get_model_metadata("vit", headers={"authorization": "Bearer wrong"})):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "401"
    finally:
        anonymous.close()


def test_metadata_config_and_statistics_equal_the_grpc_answers(server: InProcessServer,
                                                               client: tch.InferenceServerClient) -> None:
    assert client.get_server_metadata(headers={**AUTH})["name"] == "versus-vit"
    meta = client.get_model_metadata("vit", headers={**AUTH})
    assert meta["versions"] == ["1"] and meta["platform"] == "versus_vit"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("IMAGE", "BYTES", [-1])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("PROBABILITIES", "FP32", [-1, 10]), ("LABELS", "BYTES", [-1, -1])]
    config = client.get_model_config("vit", headers={**AUTH})
    assert config["max_batch_size"] == server.config.max_images_per_request == 32
    assert config["input"] == [{"name": "IMAGE", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1],
                                "reshape": {"shape": []}, "is_shape_tensor": False, "allow_ragged_batch": False,
                                "optional": False, "is_non_linear_format_io": False}]
    assert config["dynamic_batching"]["preferred_batch_size"] == [server.config.max_batch_size]
    with tcg.InferenceServerClient(server.target) as grpc_client:
        over_grpc = grpc_client.get_model_metadata("vit-tensor", headers={**AUTH}, as_json=True)
    over_rest = client.get_model_metadata("vit-tensor", "1", headers={**AUTH})
    for side in (over_grpc, over_rest):  # the gRPC client's JSON writes int64 as strings
        for t in side["inputs"] + side["outputs"]:
            t["shape"] = [int(d) for d in t["shape"]]
    assert over_rest == over_grpc
    stats = client.get_inference_statistics(headers={**AUTH})["model_stats"]
    assert {s["name"] for s in stats} == {"vit", "vit-tensor"}
    assert isinstance(stats[0]["inference_stats"]["success"]["ns"], int)  # numbers, as Triton writes them


# -- inference -----------------------------------------------------------------------------------------
def test_binary_and_json_tensors_equal_grpc(server: InProcessServer, client: tch.InferenceServerClient,
                                            held) -> None:
    blobs = [encode(im) for im in held.images[:6]]
    binary = client.infer("vit", [images(blobs)], headers={**AUTH}, request_id="rest-1", parameters={"top_k": 2})
    assert binary.get_response()["id"] == "rest-1"
    with tcg.InferenceServerClient(server.target) as grpc_client:
        inp = tcg.InferInput("IMAGE", [len(blobs)], "BYTES")
        inp.set_data_from_numpy(np.array(blobs, dtype=np.object_))
        expected = grpc_client.infer("vit", [inp], headers={**AUTH}, parameters={"top_k": 2})
    assert np.array_equal(binary.as_numpy("PROBABILITIES"), expected.as_numpy("PROBABILITIES"))
    assert binary.as_numpy("LABELS").tolist() == expected.as_numpy("LABELS").tolist()
    assert binary.as_numpy("LABELS").shape == (6, 2)
    pixels = np.stack([server.server.backend.model.preprocess(im.convert("RGB")) for im in held.images[:2]])
    tensor = tch.InferInput("PIXELS", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels.astype(np.float32), binary_data=False)  # JSON "data"
    outputs = [tch.InferRequestedOutput("PROBABILITIES", binary_data=False), tch.InferRequestedOutput("LABELS")]
    from_json = client.infer("vit-tensor", [tensor], outputs=outputs, headers={**AUTH})
    assert "data" in from_json.get_output("PROBABILITIES")  # came back as JSON
    assert "binary_data_size" in from_json.get_output("LABELS")["parameters"]
    assert np.abs(from_json.as_numpy("PROBABILITIES") - expected.as_numpy("PROBABILITIES")[:2]).max() < 1e-5


def test_rest_calls_share_the_metrics_and_statistics(server: InProcessServer, client: tch.InferenceServerClient,
                                                     held) -> None:
    before, stats = server.metrics(), client.get_inference_statistics("vit", headers={**AUTH})["model_stats"][0]
    client.infer("vit", [images([encode(im) for im in held.images[:3]])], headers={**AUTH})
    with pytest.raises(InferenceServerException):
        client.infer("vit", [images([b"not an image"])], headers={**AUTH})
    after, later = server.metrics(), client.get_inference_statistics("vit", headers={**AUTH})["model_stats"][0]
    handled = "grpc_server_handled_total"
    labels = {"grpc_type": "http", "grpc_service": "inference.GRPCInferenceService", "grpc_method": "ModelInfer"}
    for code in ("OK", "INVALID_ARGUMENT"):
        assert metric_sum(after, handled, **labels, grpc_code=code) == metric_sum(before, handled, **labels,
                                                                                 grpc_code=code) + 1
    assert later["inference_stats"]["success"]["count"] == stats["inference_stats"]["success"]["count"] + 1
    assert later["inference_stats"]["fail"]["count"] == stats["inference_stats"]["fail"]["count"] + 1
    assert later["inference_count"] == stats["inference_count"] + 3


# -- errors ----------------------------------------------------------------------------------------------
PNG = b"\x89PNG\r\n\x1a\n"


def _json_infer(inputs: list[dict], **more: object) -> bytes:
    return json.dumps({"inputs": inputs, **more}).encode()


def _binary_infer(declared: int, payload: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": declared}}]}).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


TRUNCATED = _binary_infer(100, b"\x04\x00\x00\x00ab")
LEFTOVER = _binary_infer(4, b"\x00\x00\x00\x00extra")
HOSTILE = {
    # case: (method, path, body, headers, HTTP status, gRPC code name, field or None)
    "huge body": ("POST", "/v2/models/vit/infer", b"{" + b" " * (LIMIT + 10) + b"}", {}, 413, "INVALID_ARGUMENT",
                  "request"),
    "truncated binary data": ("POST", "/v2/models/vit/infer", *TRUNCATED, 400, "INVALID_ARGUMENT", "IMAGE"),
    "binary data no input declares": ("POST", "/v2/models/vit/infer", *LEFTOVER, 400, "INVALID_ARGUMENT", "request"),
    "header length beyond the body": ("POST", "/v2/models/vit/infer", b"{}", {"Inference-Header-Content-Length": "99"},
                                      400, "INVALID_ARGUMENT", "Inference-Header-Content-Length"),
    "bad JSON": ("POST", "/v2/models/vit/infer", b'{"inputs": [', {}, 400, "INVALID_ARGUMENT", "request"),
    "JSON not an object": ("POST", "/v2/models/vit/infer", b"[1, 2]", {}, 400, "INVALID_ARGUMENT", "request"),
    "invalid UTF-8": ("POST", "/v2/models/vit/infer", b'{"id": "\xff"}', {}, 400, "INVALID_ARGUMENT", "request"),
    "nesting bomb": ("POST", "/v2/models/vit-tensor/infer", _json_infer([{"name": "PIXELS", "datatype": "FP32",
                     "shape": [1], "data": json.loads("[" * 40 + "]" * 40)}]), {}, 400, "INVALID_ARGUMENT", "PIXELS"),
    "deep JSON": ("POST", "/v2/models/vit/infer", b"[" * 100_000 + b"]" * 100_000, {}, 400, "INVALID_ARGUMENT",
                  "request"),
    "NUL bytes in the model name": ("POST", "/v2/models/vi%00t/infer", _json_infer([]), {}, 404, "NOT_FOUND", None),
    "20,000-character model name": ("GET", "/v2/models/" + "m" * 20_000, None, {}, 404, "NOT_FOUND", None),
    "wrong datatype": ("POST", "/v2/models/vit/infer", _json_infer([{"name": "IMAGE", "datatype": "FP32",
                       "shape": [1], "data": [1.0]}]), {}, 400, "INVALID_ARGUMENT", "IMAGE"),
    "strings where numbers go": ("POST", "/v2/models/vit-tensor/infer", _json_infer([{"name": "PIXELS",
                                 "datatype": "FP32", "shape": [1], "data": ["x"]}]), {}, 400, "INVALID_ARGUMENT",
                                 "PIXELS"),
    "NUL bytes in an image": ("POST", "/v2/models/vit/infer", _json_infer([{"name": "IMAGE", "datatype": "BYTES",
                              "shape": [1], "data": ["\x00" * 16]}]), {}, 400, "INVALID_ARGUMENT", "IMAGE[0]"),
    "shape of booleans": ("POST", "/v2/models/vit/infer", _json_infer([{"name": "IMAGE", "datatype": "BYTES",
                          "shape": [True], "data": []}]), {}, 400, "INVALID_ARGUMENT", "IMAGE.shape"),
    "timeout not a number": ("POST", "/v2/models/vit/infer", _json_infer([], parameters={"timeout": "soon"}), {}, 400,
                             "INVALID_ARGUMENT", "parameters.timeout"),
    "unknown model": ("GET", "/v2/models/resnet/config", None, {}, 404, "NOT_FOUND", None),
    "unknown version": ("GET", "/v2/models/vit/versions/2/stats", None, {}, 404, "NOT_FOUND", None),
    "unknown route": ("GET", "/v2/repository/index", None, {}, 404, "NOT_FOUND", None),
    "wrong method": ("DELETE", "/v2/models/vit", None, {}, 404, "NOT_FOUND", None),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_requests_get_the_protocols_errors(case: str, url: str) -> None:
    method, path, body, headers, status, code, field = HOSTILE[case]
    got, response_headers, text = raw(url, method, path, body, headers)
    assert got == status, text[:300]
    error = json.loads(text)
    assert error["code"] == code and error["error"] and len(error["error"]) <= 1024
    assert response_headers.get("x-request-id") == error["request_id"]
    if field is not None:
        assert error["violations"][0]["field"] == field, error


def test_request_id_is_echoed_and_an_error_reaches_tritonclient(url: str, client: tch.InferenceServerClient) -> None:
    status, headers, _ = raw(url, "GET", "/v2", headers={"x-request-id": "abc-123"})
    assert status == 200 and headers["x-request-id"] == "abc-123"
    with pytest.raises(InferenceServerException) as info:
        client.infer("vit", [images([PNG] * 33)], headers={**AUTH})  # over max_images_per_request
    assert info.value.status() == "400" and "IMAGE" in info.value.message()


def test_timeout_parameter_is_the_deadline(client: tch.InferenceServerClient, held) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("vit", [images([encode(im) for im in held.images[:8]])], headers={**AUTH}, timeout=1)  # 1 µs
    assert info.value.status() == "504", info.value.message()


def test_rest_uses_the_grpc_ports_tls_files(vit_digits_dir: Path, tls_files: dict[str, Path]) -> None:
    """The same certificate and client CA as the gRPC port: mTLS passes with a client certificate only."""
    import ssl

    f = tls_files
    config = VitConfig.from_env({}, model=str(vit_digits_dir), port=0, http_port=0, metrics_port=-1, host="127.0.0.1",
                                torch_threads=1, drain_delay_s=0.0, log_format="text", precision="fp32",
                                tls_cert=str(f["server.crt"]), tls_key=str(f["server.key"]),
                                tls_client_ca=str(f["ca.crt"]))
    with InProcessServer(create_server, config) as srv:
        address = f"localhost:{srv.server.http_port}"
        good = ssl.create_default_context(cafile=str(f["ca.crt"]))
        good.load_cert_chain(str(f["client.crt"]), str(f["client.key"]))
        with urllib.request.urlopen(f"https://{address}/v2", context=good, timeout=30) as response:
            assert json.loads(response.read())["name"] == "versus-vit"
        anonymous = ssl.create_default_context(cafile=str(f["ca.crt"]))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(f"https://{address}/v2", context=anonymous, timeout=30).read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://{address}/v2", timeout=30).read()
