"""Installs as a platform team makes them: the two local wheels and a per-role hashed lock, in a fresh venv.

The locks (locks/*.txt, made by `make locks`) are checked as text: every pin hashed, torch the CPU build,
no torch in the gateway-ranker role, the roles agreeing with each other, and every dependency pyproject.toml
declares for a role pinned in its lock. Then a fresh venv gets the gateway-ranker lock with --require-hashes
and our own wheels from --no-index --find-links (PyPI's unrelated "versus" can never be picked): it has no
torch, serves the ranker and the gateway, and says which extra a model server needs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import grpc
import pytest
from versus.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from versus_cli.launch import wait_serving

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from wheels import build_wheels  # noqa: E402

from locks import ROLES, TORCH  # noqa: E402 - scripts/ is no package

ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+) \\$")
MODEL_STACK = {"torch", "transformers", "diffusers", "accelerate", "peft", "safetensors", "onnxruntime"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries(role: str) -> dict[str, tuple[str, list[str]]]:
    """name → (version, hashes) of one role's lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (ROOT / "locks" / f"{role}.txt").read_text().splitlines():
        if m := ENTRY.match(line):
            current = canonical(m.group(1))
            entries[current] = (m.group(2), [])
        elif line.strip().startswith("--hash=sha256:") and current:
            entries[current][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
        elif not line.startswith(" "):
            current = None
    return entries


def declared(extras: list[str]) -> set[str]:
    """Every distribution pyproject.toml declares for these extras (followed through versus[...]), and the base."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names, todo, seen = set(), list(extras), set()
    reqs = list(project["dependencies"])
    while todo:
        extra = todo.pop()
        if extra not in seen:
            seen.add(extra)
            reqs += project["optional-dependencies"][extra]
    for req in reqs:
        name = canonical(re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0])
        if name == "versus":
            todo_extras = re.search(r"\[(.*)\]", req).group(1).split(",")
            names |= declared(todo_extras)
        else:
            names.add(name)
    return names - {"versus-contracts"}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_each_role_lock_pins_everything_it_declares_with_hashes(role: str) -> None:
    entries = lock_entries(role)
    assert entries, f"locks/{role}.txt has no pins"
    assert not [n for n, (_, hashes) in entries.items() if not hashes], "every pin carries its hashes"
    assert "versus" not in entries and "versus-contracts" not in entries, "our own wheels are never locked"
    missing = declared(ROLES[role]) - set(entries)
    assert not missing, f"locks/{role}.txt lacks {sorted(missing)}: run make locks"
    if "torch" in entries:
        assert entries["torch"][0] == TORCH.split("==")[1], "torch is the CPU build"
        assert len(entries["torch"][1]) == 1, "one torch wheel: the CPU one"


def test_the_roles_agree_and_the_gateway_ranker_role_has_no_model_stack() -> None:
    dev = {name: version for name, (version, _) in lock_entries("dev").items()}
    for role in ROLES:
        entries = lock_entries(role)
        assert {n: v for n, (v, _) in entries.items() if dev.get(n) != v} == {}, f"{role} disagrees with dev"
    assert not MODEL_STACK & set(lock_entries("gateway-ranker")), "gateway-ranker must not install a model stack"


def _uv() -> str:
    uv = Path(sys.executable).with_name("uv")
    if not uv.exists():
        pytest.fail(f"uv is not installed next to {sys.executable} (it comes with the dev lock: make setup)")
    return str(uv)


def _serve(venv: Path, service: str, args: list[str], tmp: Path) -> tuple[subprocess.Popen, str]:
    port_file = tmp / f"{service}.ports"
    log = open(tmp / f"{service}.log", "wb")  # noqa: SIM115 - the child holds it; closed with the test's tmp
    proc = subprocess.Popen([str(venv / "bin" / "versus"), "serve", service, "--host", "127.0.0.1", "--port", "0",
                             "--metrics-port", "0", "--port-file", str(port_file), *args],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""},
                            cwd=tmp)
    for _ in range(600):
        if port_file.exists() and port_file.read_text() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"{service} exited: {(tmp / f'{service}.log').read_text()[-2000:]}"
    target = f"127.0.0.1:{json.loads(port_file.read_text())['port']}"
    wait_serving(target, 60, proc=proc)
    return proc, target


@pytest.mark.slow
def test_a_gateway_ranker_install_from_the_hashed_lock_has_no_torch_and_serves(tmp_path: Path) -> None:
    uv = _uv()
    wheels = tmp_path / "wheels"
    build_wheels(wheels)
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_NATIVE_TLS": "1", "VIRTUAL_ENV": str(venv)}
    python = str(venv / "bin" / "python")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", python, "--require-hashes",
                    "-r", str(ROOT / "locks" / "gateway-ranker.txt")], check=True, env=env)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", python, "--no-index", "--no-deps",
                    "--find-links", str(wheels), "versus", "versus-contracts"], check=True, env=env)
    listed = subprocess.run([uv, "pip", "list", "--python", python, "--format", "json"], check=True, env=env,
                            capture_output=True, text=True).stdout
    installed = {canonical(p["name"]): p["version"] for p in json.loads(listed)}
    assert installed["versus"] == "0.1.0" and installed["versus-contracts"] == "0.1.0"
    assert not MODEL_STACK & set(installed), f"model stack installed: {sorted(MODEL_STACK & set(installed))}"
    subprocess.run([uv, "pip", "check", "--python", python], check=True, env=env, capture_output=True)

    ranker, ranker_target = _serve(venv, "ranker", ["--db", f"sqlite:///{tmp_path / 'r.db'}"], tmp_path)
    gateway, _ = _serve(venv, "gateway", ["--ranker", ranker_target, "--vit", "", "--http-port", "-1"], tmp_path)
    try:
        with grpc.insecure_channel(ranker_target) as channel:
            board = ranker_pb2_grpc.RankerServiceStub(channel).ListModels(ranker_pb2.ListModelsRequest(), timeout=30)
        assert len(board.models) > 0, "the ranker serves its catalog"
        # A model server needs its extra: one line that names it, exit 1 (no ImportError traceback).
        model = tmp_path / "model"
        model.mkdir()
        vit = subprocess.run([str(venv / "bin" / "versus"), "serve", "vit", "--model", str(model), "--port", "0",
                              "--metrics-port", "0"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": ""}, cwd=tmp_path)
        assert vit.returncode == 1, vit.stderr
        assert "pip install 'versus[vit]'" in vit.stderr and "Traceback" not in vit.stderr, vit.stderr
    finally:
        for proc in (gateway, ranker):
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc in (gateway, ranker)]
    assert codes == [0, 0], f"clean drain: {codes}"
    shutil.rmtree(venv, ignore_errors=True)
