"""Operator attestations in the ranker (issue 20 §3), on real channels and both stores: the first record of
(model, digest) wins and every replica reads it; hostile input is INVALID_ARGUMENT with a bounded message."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from conftest import InProcessServer
from test_ranker_hostile import assert_invalid, fail
from test_ranker_service import VIT, ranker_config
from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from services.common import known_answers
from services.ranker.server import create_server

DIGEST = "ab" * 32


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    import psycopg

    url = request.getfixturevalue("postgres_url")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS attestations")
    return url


def fingerprint(shift: float = 0.0) -> str:
    rows = [[float(i + j) + shift for j in range(10)] for i in range(known_answers.REFERENCE_COUNT)]
    return json.dumps(known_answers.record(rows, DIGEST, backend="torch", precision="fp32", device="cpu",
                                           recorded_by="gateway"))


def attest(model_id: str = VIT, digest: str = DIGEST, fp: str = "") -> ranker_pb2.RecordAttestationRequest:
    return ranker_pb2.RecordAttestationRequest(attestation=ranker_pb2.Attestation(
        model_id=model_id, digest=digest, fingerprint=fp))


def test_the_first_attestation_wins_and_every_replica_reads_it(db: str) -> None:
    with InProcessServer(create_server, ranker_config(db)) as one, InProcessServer(create_server, ranker_config(db)) \
            as two, one.channel() as ch1, two.channel() as ch2:
        a, b = ranker_pb2_grpc.RankerServiceStub(ch1), ranker_pb2_grpc.RankerServiceStub(ch2)
        first = a.RecordAttestation(attest(fp=fingerprint()), timeout=10)
        assert first.created and first.attestation.fingerprint == fingerprint() and first.attestation.recorded_at
        again = b.RecordAttestation(attest(fp=fingerprint(1.0)), timeout=10)  # another replica, a changed model
        assert not again.created and again.attestation == first.attestation  # the record stays the first one
        assert b.GetAttestation(ranker_pb2.GetAttestationRequest(model_id=VIT, digest=DIGEST),
                                timeout=10).attestation == first.attestation
        other = a.RecordAttestation(attest(digest="cd" * 32), timeout=10)  # other weights: their own record
        assert other.created and other.attestation.fingerprint == ""
        with pytest.raises(grpc.RpcError) as info:
            a.GetAttestation(ranker_pb2.GetAttestationRequest(model_id=VIT, digest="ef" * 32), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_hostile_attestations_are_invalid_argument(tmp_path: Path) -> None:
    with InProcessServer(create_server, ranker_config(f"sqlite:///{tmp_path / 'r.db'}")) as srv, \
            srv.channel() as ch:
        stub = ranker_pb2_grpc.RankerServiceStub(ch)
        long_id = "a" * 20_000
        d = fail(stub.RecordAttestation, attest(model_id=long_id))
        assert_invalid(d, "attestation.model_id")
        assert long_id not in d.message and "20000 characters" in d.message
        assert_invalid(fail(stub.GetAttestation, ranker_pb2.GetAttestationRequest(model_id=long_id, digest=DIGEST)),
                       "model_id")
        for bad in ("", "AB" * 32, "ab" * 31, "g" * 64, "a" * 20_000, DIGEST + "\x00"):
            assert_invalid(fail(stub.RecordAttestation, attest(digest=bad)), "attestation.digest")
            assert_invalid(fail(stub.GetAttestation, ranker_pb2.GetAttestationRequest(model_id=VIT, digest=bad)),
                           "digest")
        for bad in ("not json", "[]", json.dumps({"format": 1}), " " * 300_000):
            assert_invalid(fail(stub.RecordAttestation, attest(fp=bad)), "attestation.fingerprint")
        d = fail(stub.RecordAttestation, attest(model_id="Bad/Id", digest="x", fp="{"))
        assert {f for f, _ in d.violations} == {"attestation.model_id", "attestation.digest", "attestation.fingerprint"}
