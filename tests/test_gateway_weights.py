"""Weights are proven before they are called real (issue 14, item 4): services.gateway.weights.

The real path end to end: a project-built model laid out in a hub cache, served by a real vit service
from its hub id, and a catalog (served by a real ranker) that records the digests of those files as the
checkpoint's published ones → "real". Everything short of that proof is something else, and says why.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import InProcessServer
from hub_fixtures import put_in_hub_cache
from versus.common.v1 import common_pb2
from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.errors import ConfigError
from services.gateway.config import GatewayConfig
from services.gateway.weights import classify_weights

REPO, COMMIT, MODEL = "versus-test/vit-digits", "d1617" * 8, "vit-base-patch16-224"
SHIPPED = Path(__file__).parent.parent / "services/ranker/catalog"


def _common(**kw: object) -> dict:
    return {"port": 0, "metrics_port": 0, "host": "127.0.0.1", "metrics_host": "127.0.0.1", "drain_delay_s": 0.0,
            "log_format": "text"} | kw


def fixture_catalog(root: Path, published: dict[str, str], hub_id: str = REPO) -> Path:
    """The shipped catalog with vit-base's entry pointing at ``hub_id`` and recording ``published``."""
    root.mkdir()
    for path in SHIPPED.glob("*.json"):
        shutil.copy(path, root / path.name)
    doc = json.loads((SHIPPED / f"{MODEL}.json").read_text())
    doc |= {"hub_id": hub_id, "published_files": [{"path": p, "sha256": d} for p, d in published.items()],
            "published_files_source": f"https://huggingface.co/{hub_id}/tree/main (files tab, LFS sha256; test "
                                      "fixture: the project's own build)"}
    (root / f"{MODEL}.json").write_text(json.dumps(doc))
    return root


def catalog_entry(catalog: Path) -> ranker_pb2.CatalogEntry:
    """The entry as a real ranker serves it."""
    from services.ranker.config import RankerConfig
    from services.ranker.server import create_server

    config = RankerConfig.from_env({}, **_common(db=f"sqlite:///{catalog.parent / 'r.db'}", catalog=str(catalog)))
    with InProcessServer(create_server, config) as srv, srv.channel() as ch:
        return ranker_pb2_grpc.RankerServiceStub(ch).GetModel(ranker_pb2.GetModelRequest(model_id=MODEL),
                                                               timeout=10).model


def served_info(model: str) -> common_pb2.ModelInfo:
    """GetModelInfo of a real vit service serving ``model`` (a directory or a cached hub id)."""
    from services.vit.config import VitConfig
    from services.vit.server import create_server

    config = VitConfig.from_env({}, **_common(model=model, torch_threads=1, precision="fp32"))
    with InProcessServer(create_server, config) as srv, srv.channel() as ch:
        return vit_pb2_grpc.VitServiceStub(ch).GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=10).model


@pytest.fixture()
def hub_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vit_digits_dir: Path) -> common_pb2.ModelInfo:
    from huggingface_hub import constants

    put_in_hub_cache(vit_digits_dir, tmp_path / "hub", REPO, COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return served_info(REPO)


def digests(model_dir: Path) -> dict[str, str]:
    return {p.relative_to(model_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in model_dir.rglob("*.safetensors")}


def test_published_digests_and_the_hub_id_prove_weights_real(tmp_path: Path, hub_model, vit_digits_dir: Path) -> None:
    entry = catalog_entry(fixture_catalog(tmp_path / "catalog", digests(vit_digits_dir)))
    w = classify_weights("vit", hub_model, entry, {})
    assert w.kind == "real", w.proof
    assert w.reported_kind == "trained-here"  # what the service said is kept beside the proof, not used as it
    assert w.proof.startswith(f"1 of 1 served weight files match the sha256 the catalog records from {REPO} ("
                              f"https://huggingface.co/{REPO}/tree/main") and f"at revision {COMMIT}" in w.proof
    assert (w.revision, [f.path for f in w.files], w.digest) == (COMMIT, ["model.safetensors"],
                                                                  hub_model.weights.digest)


def test_one_different_file_is_not_proof(tmp_path: Path, hub_model, vit_digits_dir: Path) -> None:
    published = {path: "0" * 64 for path in digests(vit_digits_dir)}
    w = classify_weights("vit", hub_model, catalog_entry(fixture_catalog(tmp_path / "catalog", published)), {})
    assert w.kind == "trained-here"  # the project's own marker: this deployment only
    assert "never for the catalog checkpoint" in w.proof


def test_the_same_files_under_another_name_are_not_the_catalogs_checkpoint(tmp_path: Path,
                                                                          vit_digits_dir: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(vit_digits_dir, copy)
    (copy / "versus-weights.json").unlink()  # someone else's directory: no marker
    entry = catalog_entry(fixture_catalog(tmp_path / "catalog", digests(vit_digits_dir)))
    w = classify_weights("vit", served_info(str(copy)), entry, {})
    assert w.kind == "external-unverified" and w.reported_kind == "external"
    assert f"loaded as {copy}, not as the catalog's hub id {REPO}" in w.proof


def test_a_service_calling_itself_real_with_an_unpublished_digest_is_unverified() -> None:
    shipped = ranker_pb2.CatalogEntry(id=MODEL, hub_id="google/vit-base-patch16-224",
                                      published_files_source="not found: no network reaches the hub")
    lying = common_pb2.ModelInfo(id="google/vit-base-patch16-224", weights=common_pb2.ServedWeightsInfo(
        source="google/vit-base-patch16-224", digest="ab" * 32, reported_kind="real",
        files=[common_pb2.WeightFile(path="model.safetensors", sha256="cd" * 32, size_bytes=1)]))
    w = classify_weights("vit", lying, shipped, {})
    assert w.kind == "external-unverified" and w.reported_kind == "real"
    assert "the catalog records no published weight digests for vit-base-patch16-224 (not found: no network" in \
        w.proof and "the service reports 'real', which is not proof" in w.proof
    old = common_pb2.ModelInfo(id="x", properties={"weights_digest": "ab" * 32, "weights_kind": "real"})
    assert classify_weights("vit", old, shipped, {}).kind == "external-unverified"  # properties only: same


def test_a_digest_the_deployer_pinned_is_operator_attested() -> None:
    entry = ranker_pb2.CatalogEntry(id=MODEL, published_files_source="not found: …")
    info = common_pb2.ModelInfo(id="m", weights=common_pb2.ServedWeightsInfo(digest="ab" * 32,
                                                                             reported_kind="external"))
    w = classify_weights("vit", info, entry, {MODEL: "ab" * 32})
    assert w.kind == "operator-attested" and w.proof.startswith("operator-attested: the deployer pinned sha256")
    wrong = classify_weights("vit", info, entry, {MODEL: "ef" * 32})
    assert wrong.kind == "external-unverified" and "differs from the served" in wrong.proof
    random = common_pb2.ModelInfo(id="m", weights=common_pb2.ServedWeightsInfo(digest="ab" * 32,
                                                                               reported_kind="random"))
    assert classify_weights("vit", random, entry, {}).kind == "random"
    assert classify_weights("vit", common_pb2.ModelInfo(id="m"), entry, {}).kind == "unknown"


def test_attested_digests_are_a_checked_setting() -> None:
    config = GatewayConfig.from_env({"GATEWAY_ATTEST": f"{MODEL}={'ab' * 32}", "GATEWAY_HTTP_PORT": "-1"})
    assert config.attested_digests() == {MODEL: "ab" * 32}
    for bad in (f"{MODEL}=short", "=" + "ab" * 32, f"{MODEL}={'AB' * 32}", f"{MODEL}={'ab' * 32},{MODEL}={'cd' * 32}"):
        with pytest.raises(ConfigError, match="GATEWAY_ATTEST: .* is not MODEL_ID=SHA256"):
            GatewayConfig.from_env({"GATEWAY_ATTEST": bad, "GATEWAY_HTTP_PORT": "-1"})
