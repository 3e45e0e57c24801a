"""The contracts under buf: the commands ``make lint`` runs (its ``buf-check`` target) pass on the tree as it is, and
fail on a copy of protos/ where one field was renumbered, a wire-breaking change a Python review can miss. Only our
``versus/**`` files are in buf's module (the Open Inference Protocol's protos are tritonclient's, not ours)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module", autouse=True)
def _buf_installed() -> None:
    # Not a skip: CI must run these checks, and `make setup` installs buf (npm, pinned in .tools/package-lock.json).
    assert BUF.exists(), f"{BUF} is missing: run `make setup` (or `make tools`)"


def buf_check(protos: Path) -> subprocess.CompletedProcess:
    """``make buf-check`` (the step ``make lint`` runs) on the contracts in ``protos``."""
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "buf-check", f"PROTOS={protos}"],
                          capture_output=True, text=True, timeout=300)


def copy_of_protos(tmp_path: Path) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__", "*.egg-info"))
    return copy


def test_the_contracts_pass_buf_lint_and_breaking() -> None:
    result = buf_check(PROTOS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buf lint" in result.stdout and "buf breaking --against buf.baseline.binpb" in result.stdout


def test_renumbering_a_field_fails_make_lint(tmp_path: Path) -> None:
    protos = copy_of_protos(tmp_path)
    common = protos / "versus" / "common" / "v1" / "common.proto"
    text = common.read_text()
    assert text.count("  bytes data = 1;\n") == 1
    common.write_text(text.replace("  bytes data = 1;\n", "  bytes data = 7;\n"))
    result = buf_check(protos)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert 'Previously present field "1" with name "data" on message "Image" was deleted.' in output, output


def test_a_lint_violation_fails_make_lint(tmp_path: Path) -> None:
    """The lint half can fail too: a new enum without its ``…_UNSPECIFIED = 0`` value."""
    protos = copy_of_protos(tmp_path)
    common = protos / "versus" / "common" / "v1" / "common.proto"
    common.write_text(common.read_text() + "\nenum Shade {\n  SHADE_DARK = 0;\n}\n")
    result = buf_check(protos)
    assert result.returncode != 0 and "SHADE_DARK" in result.stdout + result.stderr, result.stdout + result.stderr


def test_only_our_packages_are_in_buf_s_module() -> None:
    files = subprocess.run([str(BUF), "ls-files"], cwd=PROTOS, capture_output=True, text=True, check=True,
                           timeout=120).stdout.split()
    assert files and all(f.startswith("versus/") for f in files), files
    assert len(files) == len(list((PROTOS / "versus").rglob("*.proto")))


def test_make_lint_stops_loudly_without_buf(tmp_path: Path) -> None:
    """No silent skip: without the buf binary the contract check fails and says how to install it."""
    result = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "buf-check", f"BUF={tmp_path}/buf"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "buf is not installed" in result.stderr and "make setup" in result.stderr
