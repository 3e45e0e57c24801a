"""Weights are proven before they are called real (issues 14 and 20): services.gateway.weights.

The real path end to end: a project-built model laid out in a hub cache, served by a real vit service
from its hub id, a catalog (served by a real ranker) that records the digests of those files as the
checkpoint's published ones, and the gateway hashing the same cache itself (GATEWAY_WEIGHTS_ROOT) →
"real". Digests the service reports decide nothing. Fakes that lie about weights: tests/fakes/weights.py.
"""

from __future__ import annotations

import asyncio
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
from services.common.weights import combined_digest, weight_files
from services.gateway.config import GatewayConfig
from services.gateway.weights import classify_weights, read_store
from services.gateway.weights_store import StoreReading, WeightsStore

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


def store_reading(root: Path, info: common_pb2.ModelInfo, entry: ranker_pb2.CatalogEntry | None) -> StoreReading:
    return asyncio.run(read_store(WeightsStore(str(root)), info, entry))


def test_every_published_file_hashed_by_the_gateway_proves_weights_real(tmp_path: Path, hub_model,
                                                                        vit_digits_dir: Path) -> None:
    entry = catalog_entry(fixture_catalog(tmp_path / "catalog", digests(vit_digits_dir)))
    reading = store_reading(tmp_path / "hub", hub_model, entry)
    w = classify_weights("vit", hub_model, entry, {}, reading)
    assert w.kind == "real", w.proof
    assert w.reported_kind == "trained-here"  # what the service said is kept beside the proof, not used as it
    assert w.proof.startswith(f"the gateway hashed all 1 files the catalog lists for {REPO} in "
                              f"{tmp_path / 'hub'}/models--versus-test--vit-digits/snapshots/{COMMIT}")
    assert f"https://huggingface.co/{REPO}/tree/main" in w.proof and "the same as the computed one" in w.proof
    assert (w.revision, [f.path for f in w.files]) == (COMMIT, ["model.safetensors"])
    assert w.digest == hub_model.weights.digest == w.reported_digest  # honest: computed equals reported
    assert w.store_directory == reading.directory


def test_without_a_store_the_services_own_digests_decide_nothing(tmp_path: Path, hub_model,
                                                                 vit_digits_dir: Path) -> None:
    """The honest service, unheard: its reported files equal the catalog's, but the gateway computed nothing."""
    entry = catalog_entry(fixture_catalog(tmp_path / "catalog", digests(vit_digits_dir)))
    w = classify_weights("vit", hub_model, entry, {})
    assert w.kind == "trained-here" and w.digest == "" and w.reported_digest == hub_model.weights.digest
    assert "GATEWAY_WEIGHTS_ROOT is not set" in w.proof
    assert [f.sha256 for f in w.reported_files] == list(digests(vit_digits_dir).values())


def test_one_different_file_is_not_proof(tmp_path: Path, hub_model, vit_digits_dir: Path) -> None:
    published = {path: "0" * 64 for path in digests(vit_digits_dir)}
    entry = catalog_entry(fixture_catalog(tmp_path / "catalog", published))
    w = classify_weights("vit", hub_model, entry, {}, store_reading(tmp_path / "hub", hub_model, entry))
    assert w.kind == "trained-here"  # the project's marker, read by the gateway in its store: this deployment only
    assert "never for the catalog checkpoint" in w.proof
    assert "per the project's marker in the gateway's store" in w.proof


def test_a_blob_changed_after_download_is_known_by_its_bytes_not_its_name(tmp_path: Path, hub_model,
                                                                          vit_digits_dir: Path) -> None:
    entry = catalog_entry(fixture_catalog(tmp_path / "catalog", digests(vit_digits_dir)))
    snapshot = tmp_path / "hub" / "models--versus-test--vit-digits" / "snapshots" / COMMIT
    blob = (snapshot / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # the name still says the published sha256
    w = classify_weights("vit", hub_model, entry, {}, store_reading(tmp_path / "hub", hub_model, entry))
    assert w.kind == "trained-here" and "differ from the published checkpoint" in w.proof, w.proof
    assert w.files[0].sha256 == hashlib.sha256(blob.read_bytes()).hexdigest() != blob.name


def test_reported_locations_never_lead_outside_the_store(tmp_path: Path, vit_digits_dir: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for hint, revision in ((str(vit_digits_dir), ""), ("../../" + str(vit_digits_dir), ""), ("x", "../../..")):
        info = common_pb2.ModelInfo(id="m", weights=common_pb2.ServedWeightsInfo(source=hint, revision=revision))
        reading = store_reading(store, info, ranker_pb2.CatalogEntry(id=MODEL, hub_id=REPO))
        assert reading.directory == "" and "no weight files" in reading.note


def test_a_digest_the_deployer_pinned_is_operator_attested_when_the_gateway_computed_it(tmp_path: Path,
                                                                                       vit_tiny_dir: Path) -> None:
    entry = ranker_pb2.CatalogEntry(id=MODEL, published_files_source="not found: …")
    external = tmp_path / "store" / "someone-elses"
    shutil.copytree(vit_tiny_dir, external)
    (external / "versus-weights.json").unlink()
    info = common_pb2.ModelInfo(id="m", weights=common_pb2.ServedWeightsInfo(source=str(external),
                                                                             reported_kind="external"))
    reading = store_reading(tmp_path / "store", info, entry)
    w = classify_weights("vit", info, entry, {MODEL: reading.digest}, reading)
    assert w.kind == "operator-attested" and w.proof.startswith("operator-attested: the deployer pinned sha256")
    wrong = classify_weights("vit", info, entry, {MODEL: "ef" * 32}, reading)
    assert wrong.kind == "external-unverified" and "differs from the computed" in wrong.proof
    random = common_pb2.ModelInfo(id="m", weights=common_pb2.ServedWeightsInfo(digest="ab" * 32,
                                                                               reported_kind="random"))
    assert classify_weights("vit", random, entry, {}).kind == "random"  # a built-here kind only ever lowers
    assert classify_weights("vit", common_pb2.ModelInfo(id="m"), entry, {}).kind == "unknown"


def test_attested_digests_are_a_checked_setting() -> None:
    config = GatewayConfig.from_env({"GATEWAY_ATTEST": f"{MODEL}={'ab' * 32}", "GATEWAY_HTTP_PORT": "-1"})
    assert config.attested_digests() == {MODEL: "ab" * 32}
    for bad in (f"{MODEL}=short", "=" + "ab" * 32, f"{MODEL}={'AB' * 32}", f"{MODEL}={'ab' * 32},{MODEL}={'cd' * 32}"):
        with pytest.raises(ConfigError, match=r"GATEWAY_ATTEST\): .* is not MODEL_ID=SHA256"):
            GatewayConfig.from_env({"GATEWAY_ATTEST": bad, "GATEWAY_HTTP_PORT": "-1"})


def test_a_slow_first_read_goes_on_in_the_background_and_is_shared(tmp_path: Path, vit_tiny_dir: Path) -> None:
    """SD3.5 Large is over 16 GB: a comparison does not wait for its first hashing, and concurrent comparisons
    share one read; once done, the digests are cached by path, size and mtime."""
    store = WeightsStore(str(tmp_path / "store"))
    shutil.copytree(vit_tiny_dir, tmp_path / "store" / "vit-tiny")

    async def go() -> tuple[StoreReading, list[StoreReading]]:
        early = await store.read_within(0.0, "", [], "vit-tiny")
        done = await asyncio.gather(*(store.read_within(30.0, "", [], "vit-tiny") for _ in range(3)))
        return early, list(done)

    early, done = asyncio.run(go())
    assert early.digest == "" and "still hashing" in early.note
    assert {r.digest for r in done} == {combined_digest(weight_files(vit_tiny_dir))}
    assert store.cache.hashed == len(done[0].files)  # one read for four callers


def test_cached_marks_and_duels_are_keyed_by_the_computed_digest_and_the_kind() -> None:
    from versus.gateway.v1 import gateway_pb2

    from services.gateway.weights import weights_key

    honest = gateway_pb2.ServedWeights(kind="operator-attested", digest="ab" * 32, reported_digest="ab" * 32)
    echo = gateway_pb2.ServedWeights(kind="external-unverified", reported_digest="ab" * 32)
    swapped = gateway_pb2.ServedWeights(kind="external-unverified", digest="ab" * 32, reported_digest="ab" * 32)
    assert len({weights_key(honest), weights_key(echo), weights_key(swapped)}) == 3
    assert weights_key(echo).endswith("reported:" + "ab" * 32)
