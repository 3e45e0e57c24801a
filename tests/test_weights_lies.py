"""Weights lies, end to end through Compare (issue 20 §3, §5): each fake is consistent with its own
GetModelInfo and loses exactly the weights mark it fakes; its behaviour rows keep the honest control's marks.

The store (GATEWAY_WEIGHTS_ROOT) is a weights volume laid out by hub id; the catalog (served by a real
ranker) lists the checkpoint's files with their sha256.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import InProcessServer
from fakes.weights import catalog_with, described_as, describing, echoing, external_copy, perturbed_copy, swapped
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

VIT, OTHER, HUB = "vit-base-patch16-224", "resnet-50", "versus-test/ckpt"
COMMON = {"port": 0, "metrics_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1", "drain_delay_s": 0.0,
          "log_format": "text"}
pytestmark = pytest.mark.slow


def compare(catalog: Path, vit: str, **gateway: object) -> gateway_pb2.ModelReport:
    from services.gateway.config import GatewayConfig
    from services.gateway.server import create_server as gateway_server
    from services.ranker.config import RankerConfig
    from services.ranker.server import create_server as ranker_server

    rc = RankerConfig.from_env({}, db=f"sqlite:///{catalog.parent / 'r.db'}", catalog=str(catalog),
                               bootstrap_rounds=50, **COMMON)
    with InProcessServer(ranker_server, rc) as ranker:
        gc = GatewayConfig.from_env({}, **(COMMON | {"http_port": -1, "ranker": ranker.target, "vit": vit,
                                                     "sd35": "", "cache_ttl_s": 0.0} | gateway))
        with InProcessServer(gateway_server, gc) as gw, gw.channel() as ch:
            c = gateway_pb2_grpc.GatewayServiceStub(ch).Compare(gateway_pb2.CompareRequest(
                model_ids=[VIT, OTHER], probes=gateway_pb2.ProbeOptions(live=True)), timeout=120).comparison
    return next(m for m in c.models if m.entry.id == VIT)


def marks(report: gateway_pb2.ModelReport) -> dict[str, int]:
    return {r.capability_id: r.mark for r in report.capabilities if "served here" in r.title}


@pytest.fixture()
def store(tmp_path: Path, vit_tiny_dir: Path) -> Path:
    """A weights volume holding the checkpoint by hub id (someone else's weights: no project marker)."""
    external_copy(vit_tiny_dir, tmp_path / "store" / HUB)
    return tmp_path / "store"


def published(store: Path) -> dict[str, str]:
    return {f.path: f.sha256 for f in described_as(store / HUB).files}


def test_an_echoed_digest_is_neither_real_nor_attested(tmp_path: Path, store: Path) -> None:
    catalog = catalog_with(tmp_path / "catalog", VIT, HUB, published(store))
    with describing(described_as(store / HUB, source=HUB)) as honest:
        control = compare(catalog, honest.target, weights_root=str(store))
    lie = echoing(published(store), HUB)
    with describing(lie) as liar:  # the same answers; the catalog's digests echoed; the gateway reads no store
        echoed = compare(catalog, liar.target, attest=(f"{VIT}={lie.digest}",))
    assert control.weights.kind == "real", control.weights.proof
    assert not any(m.mechanism_only for m in control.measurements)
    assert echoed.weights.kind == "external-unverified", echoed.weights.proof
    assert "an echoed digest is not attestation" in echoed.weights.proof
    assert echoed.weights.reported_digest == lie.digest and echoed.weights.digest == ""
    assert all(m.mechanism_only for m in echoed.measurements)
    assert marks(echoed) == marks(control)  # behaviour rows unchanged: only the weights mark moved


def test_a_subset_of_the_catalogs_files_is_not_real(tmp_path: Path, store: Path) -> None:
    listed = published(store) | {"extra/diffusion_pytorch_model.safetensors": "e" * 64}
    catalog = catalog_with(tmp_path / "catalog", VIT, HUB, listed)
    with describing(described_as(store / HUB, source=HUB)) as subset:  # every file it reports matches the catalog
        report = compare(catalog, subset.target, weights_root=str(store))
    assert report.weights.kind == "external-unverified", report.weights.proof
    assert "1 of the 2 files the catalog lists are not in the gateway's store" in report.weights.proof
    assert all(m.mechanism_only for m in report.measurements)


def test_attestation_needs_the_digest_the_gateway_computed(tmp_path: Path, store: Path) -> None:
    catalog = catalog_with(tmp_path / "catalog", VIT, HUB, {})
    honest = described_as(store / HUB, source=HUB)
    with describing(honest) as vit:
        report = compare(catalog, vit.target, weights_root=str(store), attest=(f"{VIT}={honest.digest}",))
    assert report.weights.kind == "operator-attested", report.weights.proof
    assert report.weights.digest == honest.digest and report.weights.store_directory == str(store / HUB)
    live = [r for r in report.capabilities if "served here" in r.title and r.mark == 1]
    assert live and all("operator-attested weights" in r.detail for r in live)


def vit_service(model: Path) -> InProcessServer:
    from services.vit.config import VitConfig
    from services.vit.server import create_server

    return InProcessServer(create_server, VitConfig.from_env({}, model=str(model), torch_threads=1, precision="fp32",
                                                             **COMMON))


def test_a_changed_model_behind_the_endpoint_contradicts_the_known_answers(tmp_path: Path,
                                                                           vit_tiny_dir: Path) -> None:
    """The honest project-built model: digest computed by the gateway, known answers (recorded at build time)
    reproduced. The same endpoint, serving other weights while describing the old ones: contradicted."""
    store = tmp_path / "store"
    store.mkdir()
    original = Path(shutil.copytree(vit_tiny_dir, store / "vit-tiny"))
    catalog = catalog_with(tmp_path / "catalog", VIT, HUB, {})
    with vit_service(original) as honest:
        control = compare(catalog, honest.target, weights_root=str(store))
    changed = perturbed_copy(original, tmp_path / "elsewhere" / "vit-tiny")
    with vit_service(changed) as other, swapped(other.target, described_as(original, kind="random")) as liar:
        lied = compare(catalog, liar.target, weights_root=str(store))
    w = control.weights
    assert (w.kind, w.known_answers, w.store_directory) == ("random", "reproduced", str(original)), \
        w.known_answers_detail
    assert w.digest == w.reported_digest
    assert lied.weights.known_answers == "contradicted", lied.weights.known_answers_detail
    assert lied.weights.kind == "external-unverified" and lied.weights.proof.startswith("contradicted: the served")
    assert lied.weights.digest == w.digest == lied.weights.reported_digest  # the files and the echo agree: no proof
    assert marks(lied) == marks(control)  # behaviour rows unchanged: only the weights mark moved


def test_a_changed_model_behind_an_attested_endpoint_is_no_longer_attested(tmp_path: Path,
                                                                           vit_tiny_dir: Path) -> None:
    """--attest pins the digest the gateway computes; the first attested run records the served model's
    fingerprint in the ranker; a later run whose model answers otherwise (the files and the echo unchanged)
    is contradicted: "the served model changed since attestation"."""
    store = tmp_path / "store"
    original = external_copy(vit_tiny_dir, store / "vit-tiny")  # no build record: only the attestation binds
    catalog = catalog_with(tmp_path / "catalog", VIT, HUB, {})
    pin = {"weights_root": str(store), "attest": (f"{VIT}={described_as(original).digest}",)}
    with vit_service(original) as honest:
        first, second = compare(catalog, honest.target, **pin), compare(catalog, honest.target, **pin)
    changed = perturbed_copy(original, tmp_path / "elsewhere" / "vit-tiny")
    with vit_service(changed) as other, swapped(other.target, described_as(original)) as liar:
        lied = compare(catalog, liar.target, **pin)
    assert (first.weights.kind, first.weights.attestation) == ("operator-attested", "recorded now"), first.weights.proof
    assert (second.weights.kind, second.weights.attestation) == ("operator-attested", "reproduced"), \
        second.weights.attestation_detail
    assert not any(m.mechanism_only for m in second.measurements)
    assert (lied.weights.kind, lied.weights.attestation) == ("external-unverified", "contradicted")
    assert lied.weights.proof.startswith("contradicted: the served model changed since attestation")
    assert lied.weights.known_answers == "not found" and lied.weights.digest == first.weights.digest
    assert all(m.mechanism_only for m in lied.measurements)
    assert marks(lied) == marks(second)  # behaviour rows unchanged: only the weights mark moved
