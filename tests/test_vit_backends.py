"""ONNX export and the ONNX Runtime backend: parity with torch on real image files, int8 agreement on the
trained digits, one contract (same errors, metrics and model info shape) on real channels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ROOT, InProcessServer, encode, metric_sum
from test_vit_service import img, vit_config
from versus.common.v1 import common_pb2
from versus.vit.v1 import vit_pb2, vit_pb2_grpc

from services.common.client import error_details
from services.common.errors import ConfigError, ModelLoadError
from services.vit.onnx_engine import EXPORT_META, OnnxEngine
from services.vit.onnx_export import FP32_TOLERANCE, ExportError, export_onnx
from services.vit.server import create_server
from services.vit.torch_engine import TorchEngine


def held_out():
    from services.vit.builders import digits_splits

    return digits_splits()[1]


def versus(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "versus_cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real image files on disk: 40 held-out digits as PNG and JPEG."""
    d = tmp_path_factory.mktemp("digit-files")
    for i, image in enumerate(held_out().images[:40]):
        image.save(d / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))
    return d


@pytest.fixture(scope="module")
def calibration_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.vit.builders import digits_splits

    d = tmp_path_factory.mktemp("calibration")
    for i, image in enumerate(digits_splits()[0].images[:200]):
        image.save(d / f"{i:04d}.png")
    return d


@pytest.fixture(scope="module")
def digits_onnx(vit_digits_dir: Path, digit_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained digits model exported through the CLI (fp32), checked on the real files."""
    out = tmp_path_factory.mktemp("exports") / "vit-digits-onnx"
    done = versus("export", "onnx", "--model", str(vit_digits_dir), "--out", str(out), "--images", str(digit_files))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def digits_int8(vit_digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "vit-digits-int8"
    export_onnx(vit_digits_dir, out, quantize_to="int8")
    return out


def torch_logits(model_dir: Path, images: list) -> np.ndarray:
    model = TorchEngine(str(model_dir), precision="fp32", device="cpu")
    model.load()
    return model.forward(np.stack([model.preprocess(im) for im in images])).logits


def onnx_logits(export_dir: Path, images: list) -> np.ndarray:
    model = OnnxEngine(str(export_dir))
    model.load()
    return model.forward(np.stack([model.preprocess(im) for im in images])).logits


# -- export -----------------------------------------------------------------------------------------
def test_fp32_export_matches_torch_on_image_files(digits_onnx: Path, digit_files: Path, vit_digits_dir: Path) -> None:
    from PIL import Image

    meta = json.loads((digits_onnx / EXPORT_META).read_text())
    assert meta["precision"] == "fp32" and meta["parity_images"] == 40
    assert meta["max_abs_logit_diff_fp32"] <= FP32_TOLERANCE
    assert {p.name for p in digits_onnx.iterdir()} >= {"model.onnx", "config.json", "preprocessor_config.json"}
    images = [Image.open(p).convert("RGB") for p in sorted(digit_files.iterdir())]
    diff = np.abs(onnx_logits(digits_onnx, images) - torch_logits(vit_digits_dir, images)).max()
    assert diff <= FP32_TOLERANCE


def test_export_has_a_dynamic_batch_axis_in_one_file(digits_onnx: Path) -> None:
    import onnx

    model = onnx.load(str(digits_onnx / "model.onnx"), load_external_data=False)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # symbolic, not a fixed size
    assert [p.name for p in digits_onnx.iterdir() if p.suffix not in (".onnx", ".json")] == []  # no external data


def test_int8_dynamic_agrees_with_fp32_on_held_out_digits(digits_int8: Path, vit_digits_dir: Path) -> None:
    held = held_out()
    int8 = onnx_logits(digits_int8, held.images).argmax(1)
    fp32 = torch_logits(vit_digits_dir, held.images).argmax(1)
    assert len(held.images) == 360 and np.mean(int8 == fp32) >= 0.99
    meta = json.loads((digits_int8 / EXPORT_META).read_text())
    assert (meta["precision"], meta["quantization"]) == ("int8", "dynamic")


def test_int8_static_qdq_with_calibration_images(vit_digits_dir: Path, calibration_files: Path, tmp_path: Path) -> None:
    report = export_onnx(vit_digits_dir, tmp_path / "qdq", quantize_to="int8", calibration=calibration_files)
    assert (report.quantization, report.calibration_images) == ("static-qdq", 200)
    held = held_out()
    agree = np.mean(onnx_logits(tmp_path / "qdq", held.images).argmax(1)
                    == torch_logits(vit_digits_dir, held.images).argmax(1))
    assert agree >= 0.99


def test_export_refusals_are_one_line(vit_tiny_dir: Path, tmp_path: Path) -> None:
    done = versus("export", "onnx", "--model", str(vit_tiny_dir), "--out", str(tmp_path / "x"),
                  "--calibration", str(tmp_path))
    assert done.returncode == 1 and done.stderr.strip() == "versus: --calibration only applies with --quantize int8"
    with pytest.raises(ExportError, match="holds no image files"):
        export_onnx(vit_tiny_dir, tmp_path / "y", images=tmp_path)


# -- the onnx backend through the service -----------------------------------------------------------
def _classify(srv: InProcessServer, images: list, **kw) -> vit_pb2.ClassifyResponse:
    with srv.channel() as ch:
        request = vit_pb2.ClassifyRequest(images=[img(encode(i)) for i in images], top_k=3, return_logits=True, **kw)
        return vit_pb2_grpc.VitServiceStub(ch).Classify(request, timeout=60)


def test_onnx_backend_serves_what_torch_serves(digits_onnx: Path, vit_digits_dir: Path) -> None:
    images = held_out().images[:24]
    with InProcessServer(create_server, vit_config(vit_digits_dir)) as ref:
        expected = _classify(ref, images)
    cfg = vit_config(digits_onnx, backend="onnx", precision="auto", onnx_threads=1)
    with InProcessServer(create_server, cfg) as srv, srv.channel() as ch:
        stub = vit_pb2_grpc.VitServiceStub(ch)
        got = _classify(srv, images)
        for a, b in zip(got.results, expected.results, strict=True):
            assert [lab.label for lab in a.labels] == [lab.label for lab in b.labels]
            assert np.abs(np.array(a.logits) - np.array(b.logits)).max() <= FP32_TOLERANCE
        info = stub.GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=10)
        assert (info.model.backend, info.model.device) == ("onnx", "cpu")
        assert info.model.precision == common_pb2.PRECISION_FP32
        assert (info.num_labels, info.num_hidden_layers, info.hidden_size, info.image_size) == (10, 4, 64, 32)
        emb = stub.Embed(vit_pb2.EmbedRequest(images=[img(encode(images[0]))], layers=[0, 2], normalize=True),
                         timeout=30)
        assert [e.layer for e in emb.results[0].embeddings] == [0, 2] and emb.dimension == 64
        assert abs(np.linalg.norm(emb.results[0].embeddings[1].values) - 1) < 1e-5
        with pytest.raises(grpc.RpcError) as bad:
            stub.Classify(vit_pb2.ClassifyRequest(images=[img(b"not an image")]), timeout=10)
        details = error_details(bad.value)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and details.reason == "INVALID_IMAGE"
        assert metric_sum(srv.metrics(), "versus_items_processed_total", model="vit-digits-onnx") >= 25


def test_onnx_embeddings_match_torch(digits_onnx: Path, vit_digits_dir: Path) -> None:
    request = vit_pb2.EmbedRequest(images=[img(encode(i)) for i in held_out().images[:4]], layers=[1, 4],
                                   pooling=vit_pb2.POOLING_MEAN)
    vectors = []
    for cfg in (vit_config(vit_digits_dir), vit_config(digits_onnx, backend="onnx")):
        with InProcessServer(create_server, cfg) as srv, srv.channel() as ch:
            reply = vit_pb2_grpc.VitServiceStub(ch).Embed(request, timeout=30)
            vectors.append(np.array([[e.values for e in r.embeddings] for r in reply.results]))
    assert vectors[0].shape == (4, 2, 64) and np.abs(vectors[0] - vectors[1]).max() < 1e-4


def test_int8_export_reports_int8(digits_int8: Path) -> None:
    with InProcessServer(create_server, vit_config(digits_int8, backend="onnx", precision="auto")) as srv:
        with srv.channel() as ch:
            info = vit_pb2_grpc.VitServiceStub(ch).GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=10)
    assert info.model.precision == common_pb2.PRECISION_INT8 and info.model.backend == "onnx"


def test_onnx_backend_refuses_what_it_cannot_serve(vit_tiny_dir: Path, digits_int8: Path) -> None:
    with pytest.raises(ModelLoadError, match="is not an ONNX export"):
        OnnxEngine(str(vit_tiny_dir)).load()
    with pytest.raises(ConfigError, match="holds a int8 export"):
        OnnxEngine(str(digits_int8), precision="fp32").load()
    with pytest.raises(ModelLoadError, match="serve it with --backend onnx"):
        TorchEngine(str(digits_int8), device="cpu").load()
    with pytest.raises(ConfigError, match="exported fp32 or int8 model"):
        vit_config(digits_int8, backend="onnx", precision="bf16")


# -- precision auto ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device, flags, expected", [
    ("cpu", {"avx2", "avx512f", "avx512_vnni"}, "fp32"),
    ("cpu", {"avx512f", "avx512_bf16"}, "bf16"),
    ("cpu", {"amx_bf16", "amx_tile"}, "bf16"),
    ("cpu", set(), "fp32"),
    ("cuda", set(), "bf16"),
])
def test_auto_precision_is_bf16_only_where_native(device: str, flags: set, expected: str) -> None:
    from services.vit.precision import auto_precision

    assert auto_precision(device, flags)[0] == expected


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    from services.vit.precision import cpu_flags

    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nflags : other\n")
    assert cpu_flags(tmp_path / "cpuinfo") == {"fpu", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_is_the_default_and_reported(vit_digits_dir: Path) -> None:
    from services.vit.config import VitConfig
    from services.vit.precision import auto_precision, cpu_flags

    assert VitConfig.from_env({"VIT_MODEL": "m"}).precision == "auto"
    expected, reason = auto_precision("cpu", cpu_flags())
    held = held_out()
    request = vit_pb2.ClassifyRequest(images=[img(encode(i)) for i in held.images[:64]], top_k=1)
    tops = {}
    for precision in ("auto", "fp32"):
        with InProcessServer(create_server, vit_config(vit_digits_dir, precision=precision, device="cpu",
                                                       max_images_per_request=64)) as srv, srv.channel() as ch:
            stub = vit_pb2_grpc.VitServiceStub(ch)
            info = stub.GetModelInfo(vit_pb2.GetModelInfoRequest(), timeout=10)
            tops[precision] = [r.labels[0].index for r in stub.Classify(request, timeout=60).results]
            if precision == "auto":
                assert common_pb2.Precision.Name(info.model.precision) == f"PRECISION_{expected.upper()}"
                assert info.model.properties["precision_requested"] == "auto"
                assert info.model.properties["precision_reason"] == reason
    assert np.mean(np.array(tops["auto"]) == np.array(tops["fp32"])) >= 0.97
