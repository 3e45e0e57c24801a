"""Make the per-role hashed locks in locks/ with uv (``make locks``): every transitive pin, with hashes.

Roles (what each installs, from pyproject.toml's extras):
  serve-vit       [vit]                      the ViT server
  serve-sd35      [sd35]                     the SD3.5 server
  gateway-ranker  [gateway,ranker,postgres]  the gateway and the ranker: no torch
  image           [vit,sd35,gateway,ranker,postgres]  the CPU image (Dockerfile: every service)
  dev             [dev]                      everything, plus the test and lock tools (`make setup`)

The dev lock is made first; every other role is resolved under its pins, so the roles agree with each
other and with what `make test` runs. An existing dev lock constrains the next run, so re-locking
moves nothing unless asked (``--upgrade``). Torch is the CPU build, torch==2.13.0+cpu, with the hash of
that one wheel (found with --find-links, default /opt/wheels; elsewhere PyTorch's CPU wheel index).
The contracts (protos/) are built here and left out of the locks: the installers add both local wheels
after the lock, with --no-deps (--require-hashes refuses local projects).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wheels import build_wheels  # noqa: E402 - scripts/ is no package

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "locks"
TORCH = "torch==2.13.0+cpu"
ROLES = {
    "dev": ["dev"],
    "serve-vit": ["vit"],
    "serve-sd35": ["sd35"],
    "gateway-ranker": ["gateway", "ranker", "postgres"],
    "image": ["vit", "sd35", "gateway", "ranker", "postgres"],
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?==\S+)")


def pins(lock: Path) -> list[str]:
    """The ``name==version`` lines of a lock, without hashes or markers (usable as constraints)."""
    return [m.group(1) for line in lock.read_text().splitlines() if (m := PIN.match(line))]


def compile_role(uv: str, role: str, constraints: Path, links: list[str]) -> None:
    cmd = [uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--generate-hashes", "--quiet",
           "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_35",
           "--no-emit-package", "versus-contracts", "--custom-compile-command", "make locks",
           "-c", str(constraints), "-o", str(LOCKS / f"{role}.txt")]
    for extra in ROLES[role]:
        cmd += ["--extra", extra]
    for link in links:
        cmd += ["--find-links", link]
    print(f"locks/{role}.txt: {' '.join(ROLES[role])}", file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "SSL_CERT_FILE": os.environ.get(
        "SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")})
    lock = LOCKS / f"{role}.txt"  # the constraints file is a temporary one: name what it held instead
    lock.write_text(lock.read_text().replace(f"-c {constraints}", f"-c {constraints.stem} (make locks)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="re-resolve dev from scratch (newest in range)")
    parser.add_argument("--torch-find-links", default=os.environ.get("TORCH_FIND_LINKS", "/opt/wheels"),
                        help="where the CPU torch wheel is (a directory or a find-links page)")
    parser.add_argument("--uv", default=str(Path(sys.executable).with_name("uv")), help="the uv binary")
    args = parser.parse_args(argv)
    LOCKS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp) / "wheels"
        build_wheels(wheels, ("contracts",))
        links = [str(wheels), args.torch_find_links]
        seed = Path(tmp) / "previous-dev-pins.txt"
        dev = LOCKS / "dev.txt"
        seed.write_text("\n".join([TORCH, *([] if args.upgrade or not dev.exists() else
                                            [p for p in pins(dev) if not p.startswith("torch==")])]) + "\n")
        compile_role(args.uv, "dev", seed, links)
        agreed = Path(tmp) / "dev-pins.txt"
        agreed.write_text("\n".join(pins(dev)) + "\n")
        for role in ROLES:
            if role != "dev":
                compile_role(args.uv, role, agreed, links)
    return 0


if __name__ == "__main__":
    sys.exit(main())
