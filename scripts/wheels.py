"""Build the two local wheels (the contracts from protos/, the services from the root) into one directory.

The sources are copied to a temporary directory first, so no build/ or *.egg-info lands in the work tree,
and built without build isolation, with the setuptools of the running environment (the dev lock pins it):
nothing is fetched. Used by `make locks` (the contracts, to resolve against), `make image` (the wheelhouse)
and tests/test_install.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: what each wheel is built from: protos/ whole; the services without tests, docs or models.
SOURCES = {"contracts": ("protos", ["."]),
           "services": (".", ["pyproject.toml", "README.md", "services", "versus_cli"])}


def build_wheels(out: Path, which: tuple[str, ...] = ("contracts", "services")) -> list[Path]:
    """Build the named wheels into ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    built = []
    with tempfile.TemporaryDirectory(prefix="versus-wheel-") as tmp:
        for name in which:
            base, parts = SOURCES[name]
            src = Path(tmp) / name
            for part in parts:
                origin = ROOT / base / part
                target = src / part if part != "." else src
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns(
                        "__pycache__", "*.egg-info", "build"), dirs_exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target)
            before = set(out.glob("*.whl"))
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--disable-pip-version-check", "-w", str(out), str(src)], check=True,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
            built += sorted(set(out.glob("*.whl")) - before) or [_existing(out, name)]
    return built


def _existing(out: Path, name: str) -> Path:
    stem = "versus_contracts-" if name == "contracts" else "versus-"
    return next(p for p in out.glob(f"{stem}*.whl"))


if __name__ == "__main__":
    for path in build_wheels(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")):
        print(path)
