"""Real weights by hub id (issue 14, items 4 and 5): vit and sd35 load ``ORG/NAME`` through the Hugging
Face cache, offline when the snapshot is cached and through the real hub client (against a fake hub on
loopback) with ``--allow-download``; services report each weight file's sha256 beside the combined
digest, and a directory without the project's marker is "external", never "real"."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from conftest import InProcessServer, encode, sample_image
from hub_fixtures import FakeHub, put_in_hub_cache
from versus.common.v1 import common_pb2
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.errors import ModelLoadError
from services.common.hub import resolve_source
from services.common.weights import PROVENANCE_FILE, DigestCache, describe_weights
from versus_cli.launch import ServiceProcess

DIGITS, TINY, SD = "versus-test/vit-digits", "versus-test/vit-tiny", "versus-test/sd35-large-tiny"
COMMIT = "5eed" * 10


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache the hub client uses (its default, as HF_HUB_CACHE would set it)."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


def test_the_cache_is_laid_out_as_the_hub_client_lays_it_out(cache: Path, vit_digits_dir: Path) -> None:
    from huggingface_hub import scan_cache_dir

    snapshot = put_in_hub_cache(vit_digits_dir, cache, DIGITS, COMMIT)
    (repo,) = scan_cache_dir(cache).repos  # the client's own reader accepts it
    assert repo.repo_id == DIGITS and [r.commit_hash for r in repo.revisions] == [COMMIT]
    resolved = resolve_source(DIGITS)
    assert (resolved.path, resolved.hub_id, resolved.revision) == (snapshot, DIGITS, COMMIT)


def test_weight_files_are_reported_with_their_sha256(cache: Path, vit_digits_dir: Path) -> None:
    put_in_hub_cache(vit_digits_dir, cache, DIGITS, COMMIT)
    served = describe_weights(resolve_source(DIGITS))
    local = describe_weights(str(vit_digits_dir))
    assert [(f.path, f.sha256) for f in served.files] == [("model.safetensors",
                                                           sha256(vit_digits_dir / "model.safetensors"))]
    assert served.files[0].size_bytes == (vit_digits_dir / "model.safetensors").stat().st_size
    assert served.digest == local.digest and len(served.digest) == 64  # same files, same combined digest
    assert (served.source, served.revision, served.kind) == (DIGITS, COMMIT, "trained-here")
    assert (local.source, local.revision) == (str(vit_digits_dir), "")


def test_a_hub_blob_is_known_by_its_bytes_never_by_its_name(cache: Path, vit_digits_dir: Path) -> None:
    snapshot = put_in_hub_cache(vit_digits_dir, cache, DIGITS, COMMIT)
    blob = (snapshot / "model.safetensors").resolve()
    assert blob.parent.name == "blobs" and blob.name == sha256(vit_digits_dir / "model.safetensors")
    blob.write_bytes(b"changed after download")  # the hub client named the blob by the sha256 it fetched
    assert describe_weights(resolve_source(DIGITS)).files[0].sha256 == hashlib.sha256(b"changed after "
                                                                                        b"download").hexdigest()


def test_digests_are_cached_by_path_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"abc")
    digests = DigestCache()
    assert digests.sha256(f) == digests.sha256(f) == hashlib.sha256(b"abc").hexdigest() and digests.hashed == 1
    f.write_bytes(b"abcd")  # rewritten in place: another size, another mtime → hashed again
    assert digests.sha256(f) == hashlib.sha256(b"abcd").hexdigest() and digests.hashed == 2
    os.utime(f, ns=(1, 1))  # same size, another mtime → hashed again
    assert digests.sha256(f) == hashlib.sha256(b"abcd").hexdigest() and digests.hashed == 3


def test_weights_without_the_projects_marker_are_external_not_real(tmp_path: Path, vit_tiny_dir: Path) -> None:
    external = tmp_path / "someone-elses"
    shutil.copytree(vit_tiny_dir, external)
    (external / PROVENANCE_FILE).unlink()
    described = describe_weights(str(external))
    assert described.kind == "external" and "unverified" in described.note
    assert describe_weights(str(vit_tiny_dir)).kind == "random"


def test_a_missing_hub_model_is_one_line_naming_the_id_and_the_cache(cache: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_source("versus-test/absent")
    message = info.value.message
    assert "\n" not in message and "versus-test/absent" in message and str(cache) in message
    assert "--allow-download" in message
    with pytest.raises(ModelLoadError, match="model directory /no/such/dir does not exist"):
        resolve_source("/no/such/dir")


def test_vit_serves_a_hub_id_from_the_cache_offline(cache: Path, vit_digits_dir: Path) -> None:
    from services.vit.config import VitConfig
    from services.vit.server import create_server

    put_in_hub_cache(vit_digits_dir, cache, DIGITS, COMMIT)
    config = VitConfig.from_env({}, model=DIGITS, port=0, metrics_port=0, host="127.0.0.1", metrics_host="127.0.0.1",
                                torch_threads=1, drain_delay_s=0.0, log_format="text", precision="fp32")
    with InProcessServer(create_server, config) as srv, srv.channel() as ch:
        stub = vit_pb2_grpc.VitServiceStub(ch)
        weights = stub.GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=10).model.weights
        assert (weights.source, weights.revision, weights.reported_kind) == (DIGITS, COMMIT, "trained-here")
        assert [(f.path, f.sha256) for f in weights.files] == [("model.safetensors",
                                                                sha256(vit_digits_dir / "model.safetensors"))]
        reply = stub.Classify(vit_pb2.ClassifyRequest(images=[common_pb2.Image(
            data=encode(sample_image()), mime_type="image/png")], top_k=1), timeout=30)
        assert len(reply.results) == 1 and reply.results[0].labels


def test_sd35_serves_hub_ids_from_the_cache_offline(cache: Path, sd35_dirs: dict[str, Path]) -> None:
    from services.sd35.config import Sd35Config
    from services.sd35.server import create_server

    put_in_hub_cache(sd35_dirs["large"], cache, SD, COMMIT)
    config = Sd35Config.from_env({}, models=(f"large={SD}",), port=0, metrics_port=0, host="127.0.0.1",
                                 metrics_host="127.0.0.1", drain_delay_s=0.0, log_format="text", torch_threads=1,
                                 default_size=128)
    with InProcessServer(create_server, config) as srv, srv.channel() as ch:
        info = sd35_pb2_grpc.Sd35ServiceStub(ch).GetModelInfo(sd35_pb2.GetModelInfoRequest(), timeout=10)
        weights = info.variants[0].model.weights
        assert (weights.source, weights.revision, weights.reported_kind) == (SD, COMMIT, "random")
        paths = {f.path: f.sha256 for f in weights.files}
        assert "transformer/diffusion_pytorch_model.safetensors" in paths and len(paths) >= 4
        for path, digest in paths.items():
            assert digest == sha256(sd35_dirs["large"] / path), path
        assert weights.digest == info.variants[0].model.properties["weights_digest"]


def test_sd35_names_the_variant_id_and_cache_when_a_hub_model_is_missing(cache: Path) -> None:
    from services.sd35.config import Sd35Config
    from services.sd35.engine import Sd35Runner
    from services.sd35.variants import variant_specs

    spec = variant_specs(Sd35Config.from_env({}, models=("large=versus-test/absent",)))["large"]
    with pytest.raises(ModelLoadError) as info:
        Sd35Runner(spec, "versus-test/absent", device="cpu").load()
    assert info.value.message.startswith("large: model versus-test/absent is neither a directory nor in the "
                                         f"Hugging Face cache {cache}")


@pytest.mark.slow
def test_allow_download_fetches_through_the_hub_client(tmp_path: Path, vit_tiny_dir: Path) -> None:
    """`versus serve vit --model ORG/NAME --allow-download` against a hub on loopback (HF_ENDPOINT); without
    the flag the same id is refused in one line and the hub is never asked."""
    repo = tmp_path / "repo"
    shutil.copytree(vit_tiny_dir, repo)
    (repo / "pytorch_model.bin").write_bytes(b"pickle: never fetched")
    with FakeHub({TINY: repo}) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "VIT_TORCH_THREADS": "1", "VIT_PRECISION": "fp32"}
        with ServiceProcess("vit", ["--model", TINY, "--allow-download"], env=env,
                            log_path=tmp_path / "vit.log").start(timeout_s=180) as vit, \
                grpc.insecure_channel(vit.target) as ch:
            info = vit_pb2_grpc.VitServiceStub(ch).GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=10)
            weights = info.model.weights
        assert (weights.source, weights.revision) == (TINY, hub.commit)
        assert [(f.path, f.sha256) for f in weights.files] == [("model.safetensors",
                                                                sha256(vit_tiny_dir / "model.safetensors"))]
        fetched = [r for r in hub.requests if r.startswith("GET /versus-test/vit-tiny/resolve/")]
        assert any(r.endswith("/model.safetensors") for r in fetched)
        assert not any("pytorch_model.bin" in r for r in hub.requests)  # safetensors only
        asked = len(hub.requests)
        offline = subprocess.run([sys.executable, "-m", "versus_cli", "serve", "vit", "--model", TINY, "--port", "0",
                                  "--metrics-port", "-1"], env={**os.environ, **env,
                                                                "HF_HUB_CACHE": str(tmp_path / "empty")},
                                 capture_output=True, text=True, timeout=120)
        assert offline.returncode != 0 and len(hub.requests) == asked  # no flag, no network
        assert f"model {TINY} is neither a directory nor in the Hugging Face cache {tmp_path / 'empty'}" in \
            offline.stderr
