"""The layers as a user meets them: the contracts install and import alone; the ranker process never
loads torch; the tools fail with one line; the --json output speaks the proto field names."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import InProcessServer

from services.ranker.config import RankerConfig
from services.ranker.server import create_server as create_ranker
from versus_cli.launch import ServiceProcess, ServiceStartError

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(sysconfig.get_paths()["purelib"])
#: What a client of the contracts needs: protobuf, grpcio (+ typing-extensions), grpcio-status (+ googleapis protos).
CONTRACT_PACKAGES = ("google", "grpc", "grpc_status", "typing_extensions.py")
CONTRACT_DISTS = ("protobuf", "grpcio", "grpcio_status", "googleapis_common_protos", "typing_extensions")
STUB_MODULES = [f"versus.{svc}.v1.{svc}_pb2{suffix}" for svc in ("common", "vit", "sd35", "ranker", "gateway")
                for suffix in ("", "_grpc")]


def _link_contract_deps(site: Path) -> None:
    for entry in SITE.iterdir():
        dist = entry.name.split("-")[0] if entry.name.endswith(".dist-info") else None
        if entry.name in CONTRACT_PACKAGES or dist in CONTRACT_DISTS:
            (site / entry.name).symlink_to(entry)


@pytest.mark.slow
def test_contracts_install_and_import_in_a_venv_with_only_their_dependencies(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    _link_contract_deps(site)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # Build the contracts' wheel (from a copy: building writes build/ folders) with this environment's
    # setuptools, offline, and install it in the bare venv.
    source = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("versus_contracts-*.whl"))
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", str(wheel)],
                   check=True, env=env, cwd=tmp_path)
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    code = (
        "import importlib, sys\n"
        f"for name in {STUB_MODULES!r}: importlib.import_module(name)\n"
        "from grpc_status import rpc_status\n"
        "import versus.vit.v1.vit_pb2 as v; assert v.__file__.startswith(sys.prefix), v.__file__\n"
        "heavy = [m for m in ('torch', 'numpy', 'PIL', 'services', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "for m in ('torch', 'numpy', 'services'):\n"
        "    try:\n        importlib.import_module(m)\n    except ImportError:\n        pass\n"
        "    else:\n        raise SystemExit(m + ' is importable: the venv is not minimal')\n"
        "print('ok', len(sys.modules))\n"
    )
    out = subprocess.run([str(py), "-I", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr
    # the .proto sources and .pyi stubs ship with the distribution
    installed = next((venv / "lib").glob("python3*/site-packages")) / "versus"
    assert (installed / "vit" / "v1" / "vit.proto").exists() and (installed / "vit" / "v1" / "vit_pb2.pyi").exists()


def _loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
def test_the_ranker_process_never_loads_torch(tmp_path: Path) -> None:
    with ServiceProcess("ranker", ["--db", f"sqlite:///{tmp_path / 'r.db'}", "--drain-delay-s", "0"],
                        log_path=tmp_path / "ranker.log") as svc:
        subprocess.run([sys.executable, "-m", "versus_cli", "rank", "--target", svc.target,
                        "vit-base-patch16-224"], check=True, capture_output=True, timeout=60)
        assert svc.proc is not None
        maps = _loaded_libraries(svc.proc.pid)
    assert "libtorch" not in maps and "/torch/" not in maps
    assert "grpc" in maps  # the check reads the right process


def test_a_missing_file_is_one_line_and_exit_1() -> None:
    out = subprocess.run([sys.executable, "-m", "versus_cli", "classify", "--target", "127.0.0.1:1",
                          "/no/such/file.png"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == "versus: cannot read /no/such/file.png: No such file or directory"
    assert "Traceback" not in out.stderr


def test_an_unreachable_service_is_one_line_and_exit_1(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"not really")
    out = subprocess.run([sys.executable, "-m", "versus_cli", "classify", "--target", "127.0.0.1:1", "--timeout-s", "2",
                          str(image)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("versus: UNAVAILABLE"), out.stderr


def test_a_service_that_fails_to_start_shows_its_own_error_and_log(tmp_path: Path) -> None:
    log = tmp_path / "vit.log"
    with pytest.raises(ServiceStartError) as info:
        ServiceProcess("vit", ["--model", str(tmp_path / "missing-model")], log_path=log).start(timeout_s=120)
    text = str(info.value)
    assert "vit service failed to start" in text
    assert f"model directory {tmp_path / 'missing-model'} does not exist" in text
    assert str(log) in text


@pytest.mark.slow
def test_demo_reports_a_failed_service_instead_of_crashing(tmp_path: Path, sd35_dirs: dict[str, Path]) -> None:
    """`versus demo` with a models dir whose vit model is broken: the user sees the service's error."""
    models, out_dir = tmp_path / "models", tmp_path / "out"
    (models / "vit-base-random").mkdir(parents=True)  # looks built, so the demo does not rebuild it; corrupt
    (models / "vit-base-random" / "config.json").write_text("{}")
    (models / "vit-base-random" / "model.safetensors").write_bytes(b"\x00" * 16)
    for variant, name in (("large", "sd35-large-tiny"), ("large-turbo", "sd35-large-turbo-tiny"),
                          ("medium", "sd35-medium-tiny")):
        (models / name).symlink_to(sd35_dirs[variant])
    out = subprocess.run([sys.executable, "-m", "versus_cli", "demo", "--models-dir", str(models), "--out",
                          str(out_dir)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "AttributeError" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "vit service failed to start" in out.stderr
    assert "cannot load" in out.stderr  # the service's own words, from its log
    assert str(out_dir / "logs" / "vit.log") in out.stderr


_CAMEL = re.compile(r"^[a-z]+[A-Z]")


def _keys(doc: object) -> list[str]:
    if isinstance(doc, dict):
        return [*doc, *(k for v in doc.values() for k in _keys(v))]
    if isinstance(doc, list):
        return [k for v in doc for k in _keys(v)]
    return []


def test_cli_json_uses_the_proto_field_names(tmp_path: Path) -> None:
    cfg = RankerConfig.from_env({}, db=f"sqlite:///{tmp_path / 'r.db'}", port=0, metrics_port=-1, host="127.0.0.1",
                                drain_delay_s=0.0, log_format="text")
    with InProcessServer(create_ranker, cfg) as srv:
        for args in (["rank", "vit-base-patch16-224", "stable-diffusion-3.5-large"], ["leaderboard"]):
            out = subprocess.run([sys.executable, "-m", "versus_cli", *args, "--target", srv.target, "--json"],
                                 capture_output=True, text=True, timeout=60, check=True)
            keys = set(_keys(json.loads(out.stdout)))
            assert keys, out.stdout
            assert not [k for k in keys if _CAMEL.match(k)], keys
        assert "model_id" in json.loads(subprocess.run(
            [sys.executable, "-m", "versus_cli", "rank", "vit-base-patch16-224", "--target", srv.target, "--json"],
            capture_output=True, text=True, timeout=60, check=True).stdout)["scores"][0]
