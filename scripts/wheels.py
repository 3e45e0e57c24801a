"""Build the two local wheels (the contracts from protos/, the services from the root) into one directory,
or with ``--lock`` a hashed lock's wheels: the wheelhouse an image installs from offline.

The sources are copied to a temporary directory first, so no build/ or *.egg-info lands in the work tree,
and built without build isolation, with the setuptools of the running environment (the dev lock pins it):
nothing is fetched. Used by `make locks` (the contracts, to resolve against), `make image` (the wheelhouse)
and tests/test_install.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: what each wheel is built from: protos/ whole; the services without tests, docs or models.
SOURCES = {"contracts": ("protos", ["."]),
           "services": (".", ["pyproject.toml", "README.md", "services", "versus_cli"])}


#: wheel entries' timestamps (1980-01-01): the same sources give the same bytes, so an image rebuild reuses its
#: layers when nothing changed.
REPRODUCIBLE = "315532800"


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
                           env={**os.environ, "PYTHONWARNINGS": "ignore", "SOURCE_DATE_EPOCH": REPRODUCIBLE})
            built += sorted(set(out.glob("*.whl")) - before) or [_existing(out, name)]
    return built


def _existing(out: Path, name: str) -> Path:
    stem = "versus_contracts-" if name == "contracts" else "versus-"
    return next(p for p in out.glob(f"{stem}*.whl"))


def lock_entries(lock: Path) -> list[str]:
    """The lock's entries, each its pin line with its hash lines (comments dropped)."""
    entries: list[list[str]] = []
    for line in lock.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            entries.append([line])
        elif line.strip().startswith("--hash=") and entries:
            entries[-1].append(line)
    return ["\n".join(entry) for entry in entries]


def download_lock(lock: Path, out: Path, find_links: str = "", jobs: int = 8) -> None:
    """Every file of a hashed lock into ``out`` with ``pip download --require-hashes``, ``jobs`` at a time
    (pip asks the index one package after another: seconds each here)."""
    entries = lock_entries(lock)
    chunks = [entries[i::jobs] for i in range(jobs) if entries[i::jobs]]
    with tempfile.TemporaryDirectory(prefix="versus-lock-") as tmp:
        def fetch(i: int) -> None:
            part = Path(tmp) / f"part-{i}.txt"
            part.write_text("\n".join(chunks[i]) + "\n")
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--require-hashes", "--only-binary", ":all:", "-d", str(out), "-r", str(part),
                            *(["--find-links", find_links] if find_links else [])], check=True)

        with concurrent.futures.ThreadPoolExecutor(len(chunks)) as pool:
            list(pool.map(fetch, range(len(chunks))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="dist", help="the directory the wheels go to")
    parser.add_argument("--lock", default="", help="download this hashed lock's wheels instead (a wheelhouse)")
    parser.add_argument("--find-links", default="", help="where the CPU torch wheel is (pip --find-links)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.lock:
        download_lock(Path(args.lock), out, args.find_links)
        print(f"{len(lock_entries(Path(args.lock)))} locked wheels in {out}")
        return 0
    for path in build_wheels(out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
