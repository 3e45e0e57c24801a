"""Routes without servers: the wire-level rewrite, pairing two replies, and the route declarations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes.oip import LABELS, HashClassifier, request_bytes
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from services.common.errors import ConfigError
from services.gateway.config import GatewayConfig
from services.gateway.routes import pairing, wire
from services.gateway.routes.route import kept_input, share_point
from services.gateway.routes.spec import parse_routes
from services.gateway.routes.table import pair_id


# -- the wire ------------------------------------------------------------------------------------------
def test_rewrite_changes_only_the_model_name_and_version() -> None:
    request = pb.ModelInferRequest.FromString(request_bytes("route-a", [b"\x89PNG one", b"two"], "id-7"))
    request.model_version = "client-version"
    request.parameters["top_k"].int64_param = 3
    request.outputs.add(name="scores")
    raw = request.SerializeToString()
    out = wire.rewrite(raw, "clf", "2")
    parsed = pb.ModelInferRequest.FromString(out)
    assert (parsed.model_name, parsed.model_version) == ("clf", "2")
    assert wire.without_model(out) == wire.without_model(raw)  # every other record: the same bytes, in order
    request.model_name, request.model_version = "clf", "2"
    assert parsed == request
    assert pb.ModelInferRequest.FromString(wire.rewrite(raw, "clf", "")).model_version == ""
    assert wire.strings(raw) == {1: "route-a", 2: "client-version", 3: "id-7"}


def test_rewrite_keeps_unknown_fields_and_field_order() -> None:
    """A field this gateway's protobuf does not know (number 99) and a non-canonical order survive unchanged."""
    unknown = bytes([0x9A, 0x06, 3]) + b"xyz"  # field 99, length-delimited
    raw = bytes([0x1A, 2]) + b"id" + unknown + bytes([0x0A, 1]) + b"r"  # id, unknown, then the model name
    out = wire.rewrite(raw, "clf", "")
    assert out == bytes([0x0A, 3]) + b"clf" + bytes([0x1A, 2]) + b"id" + unknown


@pytest.mark.parametrize("raw", [b"\x0a\x05ab", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0b", b"\x00"])
def test_hostile_bytes_are_a_wire_error(raw: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.rewrite(raw, "clf", "")


def test_input_digest_covers_the_inputs_only() -> None:
    a = request_bytes("r", [b"img"], "1")
    assert wire.input_digest(a) == wire.input_digest(request_bytes("other", [b"img"], "2"))
    assert wire.input_digest(a) != wire.input_digest(request_bytes("r", [b"img2"], "1"))


def test_pair_ids() -> None:
    assert pair_id("abc", "call") == "abc" and pair_id("", "call") == "call"
    long = pair_id("x" * 20_000, "call")
    assert long.startswith("sha256:") and len(long) == 71 and pair_id("a\x00b", "c").startswith("sha256:")


def test_share_points_are_deterministic_and_uniform() -> None:
    points = [share_point("r", "mirror", str(i)) for i in range(4000)]
    assert points[:10] == [share_point("r", "mirror", str(i)) for i in range(10)]
    assert 0.22 < np.mean(np.asarray(points) < 0.25) < 0.28


# -- pairing -----------------------------------------------------------------------------------------------
def _reply(fake: HashClassifier, images: list[bytes]) -> pb.ModelInferResponse:
    import asyncio

    return pb.ModelInferResponse.FromString(asyncio.run(fake.infer(request_bytes("clf", images), None)))


def test_pairing_identical_answers_agree_with_full_overlap() -> None:
    images = [bytes([i]) * 20 for i in range(8)]
    side = pairing.Side(LABELS, "scores")
    rows = pairing.pair_rows(_reply(HashClassifier(), images), _reply(HashClassifier(), images), side, side)
    assert len(rows) == 8
    assert all(r.primary_label == r.candidate_label and r.top5_overlap == 5 for r in rows)
    expected = [LABELS[int(np.argmax(HashClassifier().scores(d)))] for d in images]  # from the fake's own scores
    assert [r.primary_label for r in rows] == expected


def test_pairing_compares_by_label_name_across_label_orders() -> None:
    images = [bytes([i]) * 20 for i in range(16)]
    order = tuple(reversed(LABELS))
    rows = pairing.pair_rows(_reply(HashClassifier(), images), _reply(HashClassifier(order=order), images),
                             pairing.Side(LABELS), pairing.Side(order))
    assert all(r.primary_label == r.candidate_label and r.top5_overlap == 5 for r in rows)
    wrong = pairing.pair_rows(_reply(HashClassifier(), images), _reply(HashClassifier(order=order), images),
                              pairing.Side(LABELS), pairing.Side(LABELS))  # the candidate's labels misread
    assert sum(r.primary_label != r.candidate_label for r in wrong) > 8


def test_pairing_a_flipped_answer_disagrees_and_keeps_its_top5() -> None:
    flipper = HashClassifier(flip=1.0)
    side = pairing.Side(LABELS)
    rows = pairing.pair_rows(_reply(HashClassifier(), [b"a", b"b"]), _reply(flipper, [b"a", b"b"]), side, side)
    assert all(r.primary_label != r.candidate_label and r.top5_overlap == 5 for r in rows)


def test_pairing_label_outputs_and_unusable_replies() -> None:
    def labels_reply(entries: list[bytes], shape: list[int]) -> pb.ModelInferResponse:
        reply = pb.ModelInferResponse()
        reply.outputs.add(name="label", datatype="BYTES", shape=shape)
        arr = np.empty(len(entries), dtype=np.object_)
        arr[:] = entries
        reply.raw_output_contents.append(serialize_byte_tensor(arr).item())
        return reply

    a = labels_reply([b"0.9:3:three", b"0.1:1:one", b"0.8:7:seven", b"0.2:2:two"], [2, 2])
    b = labels_reply([b"three", b"eight"], [2])
    rows = pairing.pair_rows(a, b, pairing.Side(), pairing.Side())
    assert [(r.primary_label, r.candidate_label, r.top5_overlap) for r in rows] == [
        ("three", "three", -1), ("seven", "eight", -1)]
    scores = _reply(HashClassifier(), [b"x", b"y", b"z"])
    assert pairing.pair_rows(scores, b, pairing.Side(LABELS), pairing.Side()) == []  # 3 rows against 2
    assert pairing.pair_rows(pb.ModelInferResponse(), scores, pairing.Side(), pairing.Side(LABELS)) == []
    broken = _reply(HashClassifier(), [b"x"])
    broken.raw_output_contents[0] = broken.raw_output_contents[0][:-4]
    assert pairing.answers(broken, pairing.Side(LABELS)) is None
    assert pairing.decode(b"\xff\xff") is None


def test_kept_input_is_the_single_image() -> None:
    assert kept_input(request_bytes("r", [b"PNGDATA"])) == b"PNGDATA"
    assert kept_input(request_bytes("r", [b"a", b"b"])) == b""
    assert kept_input(request_bytes("r", [b"x" * ((1 << 20) + 1)])) == b""
    assert kept_input(b"\xff\xff") == b""


# -- declarations ------------------------------------------------------------------------------------------
def _config(tmp_path: Path, **kw) -> GatewayConfig:
    labels = HashClassifier().write_labels(tmp_path / "labels.txt")
    deployments = (f"prim=127.0.0.1:1,model=clf,labels={labels}", f"cand=127.0.0.1:2,model=clf,labels={labels}")
    kw.setdefault("ranker", "127.0.0.1:3")
    return GatewayConfig.from_env({}, http_port=-1, deployments=deployments, **kw)


def test_route_flags_and_yaml(tmp_path: Path) -> None:
    config = _config(tmp_path, route=("digits=primary:prim,candidate:cand,mirror=0.25,keep_inputs=true,"
                                      "bound=agreement>=0.95,bound=p99 ratio <= 1.2,queue=16",))
    spec = parse_routes(config)["digits"]
    assert (spec.mode, spec.share, spec.keep_inputs, spec.queue) == ("shadow", 0.25, True, 16)
    assert [b.text() for b in spec.bounds] == ["agreement >= 0.95", "p99_ratio <= 1.2"]
    yaml_file = tmp_path / "routes.yaml"
    yaml_file.write_text("routes:\n  - name: canary-a\n    primary: prim\n    candidate: cand\n    split: 0.05\n"
                         "    bounds: ['error-rate difference <= 0.001']\n")
    spec = parse_routes(_config(tmp_path, routes=str(yaml_file)))["canary-a"]
    assert (spec.mode, spec.share, [b.text() for b in spec.bounds]) == ("canary", 0.05, ["error_rate_diff <= 0.001"])
    env = GatewayConfig.from_env({"GATEWAY_ROUTE": "a=primary:prim,candidate:cand,mirror=1;"
                                                   "b=primary:cand,candidate:prim,split=0.5",
                                  "GATEWAY_DEPLOYMENTS": ";".join(config.deployments), "GATEWAY_RANKER": "x:1",
                                  "GATEWAY_HTTP_PORT": "-1"})
    assert sorted(parse_routes(env)) == ["a", "b"]


@pytest.mark.parametrize("route,words", [
    ("x=primary:prim,candidate:cand", "exactly one of mirror"),
    ("x=primary:prim,candidate:cand,mirror=0.5,split=0.1", "exactly one of mirror"),
    ("x=primary:prim,candidate:nope,mirror=1", "'nope' is not a --deployment id"),
    ("x=primary:prim,candidate:prim,mirror=1", "the same deployment"),
    ("x=candidate:cand,mirror=1", "primary:DEPLOYMENT is required"),
    ("X" * 20_000 + "=primary:prim,candidate:cand,mirror=1", "must be 1..64 characters"),
    ("x=primary:prim,candidate:cand,mirror=1.5", "mirror must be in [0, 1]"),
    ("x=primary:prim,candidate:cand,mirror=nan", "mirror must be in"),
    ("x=primary:prim,candidate:cand,mirror=1,bound=accuracy>=2", "bound:"),
    ("x=primary:prim,candidate:cand,mirror=1,queue=0", "queue must be in"),
    ("x=primary:prim,candidate:cand,mirror=1,colour=red", "unknown item"),
    ("x=primary:prim,candidate:cand,mirror=1,mirror=0.5", "mirror given twice"),
    ("nothing", "is not NAME=primary"),
])
def test_bad_routes_are_refused_with_one_line_naming_the_flag(tmp_path: Path, route: str, words: str) -> None:
    with pytest.raises(ConfigError, match="--route \\(GATEWAY_ROUTE\\)") as info:
        parse_routes(_config(tmp_path, route=(route,)))
    assert words in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 400


def test_routes_need_a_ranker_and_unique_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need --ranker"):
        parse_routes(_config(tmp_path, ranker="", route=("a=primary:prim,candidate:cand,mirror=1",)))
    with pytest.raises(ConfigError, match="declared twice"):
        parse_routes(_config(tmp_path, route=("a=primary:prim,candidate:cand,mirror=1",) * 2))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("routes:\n  - name: a\n    primary: prim\n    candidate: cand\n    mirror: 1\n    colour: x\n")
    with pytest.raises(ConfigError, match="GATEWAY_ROUTES.*unknown keys colour"):
        parse_routes(_config(tmp_path, routes=str(bad_yaml)))
    with pytest.raises(ConfigError, match="cannot read"):
        parse_routes(_config(tmp_path, routes=str(tmp_path / "missing.yaml")))


def test_the_mirror_queue_is_bounded_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from services.common.metrics import Metrics
    from services.gateway.routes import route as route_module
    from services.gateway.routes.metrics import RouteMetrics
    from services.gateway.routes.spec import RouteSpec
    from services.gateway.routes.upstream import Outcome

    monkeypatch.setattr(route_module, "MAX_QUEUED_BYTES", 1000)

    async def main() -> tuple[int, dict]:
        from services.gateway.deployments import DeploymentSpec
        from services.gateway.routes.recorder import Recorder

        dep = DeploymentSpec("a", "127.0.0.1:1", "m")
        spec = RouteSpec("r", "shadow", 1.0, dep, DeploymentSpec("b", "127.0.0.1:2", "m"), queue=100)
        recorder = Recorder("r", "x", lambda: None, None, lambda s: None, lambda n: None)  # type: ignore[arg-type]
        route = route_module.Route(spec, RouteMetrics(Metrics(CollectorRegistry())), recorder)
        for i in range(5):  # no workers: everything stays queued
            route._enqueue(route_module.Job(b"x" * 300, str(i), "primary", Outcome("OK", 0.0), 0.0, None))
        await route.primary.close()
        await route.candidate.close()
        return route.queue.qsize(), dict(route.counters.total.dropped)

    assert asyncio.run(main()) == (3, {"queue_full": 2})
