"""The routes' OIP REST front door (``POST /v2/models/NAME/infer`` on the gateway's HTTP port): the body is converted
to the protocol's message, goes through the route like a gRPC request (answer, mirror, pair), and the answering
side's reply comes back as the protocol's JSON; errors keep their status, mapped to HTTP."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import InProcessServer
from fakes.oip import HashClassifier, OipServer
from test_routes import COMMON, RankerServer, RecordingRanker, wait_for
from tritonclient.utils import serialize_byte_tensor

from services.common.oip_json import HEADER_LENGTH
from services.gateway.config import GatewayConfig


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("routes-rest")
    fakes = {"prim": HashClassifier(), "same": HashClassifier(), "err": HashClassifier(mode="error")}
    ranker = RecordingRanker()
    with contextlib.ExitStack() as es:
        servers = {name: es.enter_context(InProcessServer(OipServer.create, fake)) for name, fake in fakes.items()}
        ranker_server = es.enter_context(InProcessServer(RankerServer.create, ranker))
        deployments = tuple(f"{name}={s.target},model=clf,labels={fakes[name].write_labels(tmp / f'{name}.txt')}"
                            for name, s in servers.items())
        config = GatewayConfig.from_env(
            {}, http_port=0, http_host="127.0.0.1", http_open=True, ranker=ranker_server.target,
            deployments=deployments, route=("shadow=primary:prim,candidate:same,mirror=1",
                                            "canary=primary:prim,candidate:err,split=1"), **COMMON)
        from services.gateway.server import create_server

        gateway = es.enter_context(InProcessServer(create_server, config))
        yield f"http://127.0.0.1:{gateway.server.backend.http_port}", fakes, ranker


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def image_body(images: list[bytes], request_id: str) -> tuple[bytes, dict[str, str]]:
    encoded = np.empty(len(images), dtype=np.object_)
    encoded[:] = images
    chunk = serialize_byte_tensor(encoded).item()
    header = json.dumps({"id": request_id, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                                       "parameters": {"binary_data_size": len(chunk)}}],
                         "outputs": [{"name": "scores"}]}).encode()
    return header + chunk, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


def test_rest_infer_goes_through_the_route_and_is_paired(stack) -> None:
    base, fakes, ranker = stack
    body, headers = image_body([b"rest image 1", b"rest image 2"], "rest-1")
    status, _, payload = post(f"{base}/v2/models/shadow/infer", body, headers)
    assert status == 200, payload
    reply = json.loads(payload)
    (out,) = reply["outputs"]
    expected = np.stack([fakes["prim"].scores(b"rest image 1"), fakes["prim"].scores(b"rest image 2")])
    assert out["name"] == "scores" and out["shape"] == [2, expected.shape[1]] and reply["id"] == "rest-1"
    assert np.allclose(np.asarray(out["data"], dtype=np.float32), expected.ravel())
    wait_for(lambda: any(p.request_id == "rest-1" for p in ranker.pairs("shadow")))
    pair = next(p for p in ranker.pairs("shadow") if p.request_id == "rest-1")
    assert (pair.primary_status, pair.candidate_status, len(pair.rows)) == ("OK", "OK", 2)


def test_rest_errors_keep_their_status(stack) -> None:
    base, fakes, ranker = stack
    body, headers = image_body([b"x"], "rest-2")
    status, _, payload = post(f"{base}/v2/models/canary/infer", body, headers)  # the failing candidate answers
    assert status == 500 and json.loads(payload)["code"] == "INTERNAL"
    status, _, payload = post(f"{base}/v2/models/{'n' * 2_000}/infer", body, headers)
    assert status == 404 and json.loads(payload)["error"]["code"] == 404 and len(payload) < 2_000
    status, _, _ = post(f"{base}/v2/models/{'n' * 20_000}/infer", body, headers)
    assert status == 400  # the request line is over the HTTP server's limit
    status, _, payload = post(f"{base}/v2/models/shadow/infer", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and json.loads(payload)["error"]["code"] == 400
    status, _, payload = post(f"{base}/v2/models/shadow/infer", body, {HEADER_LENGTH: "999999"})
    assert status == 400
