"""Generate Python code and .pyi stubs for every proto under protos/ — the one codegen script.

Generated code is committed beside the .proto files, under ``protos/versus/`` (the contracts
distribution, installable on its own) (so a clone runs without a build step, and gRPC
reflection serves the same descriptors everywhere); ``tests/test_protos.py`` regenerates into a
temporary folder and fails if the committed files differ.

Usage: python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    """All .proto files, sorted so output is stable."""
    return sorted((PROTO_ROOT / "versus").rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Run protoc (grpcio-tools) with the grpc and mypy plugins into ``out``; return written files."""
    import grpc_tools
    from grpc_tools import protoc

    plugin_dir = Path(sys.executable).parent
    include = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    gen_root = out / "versus"
    for pkg_dir in {p.parent for p in gen_root.rglob("*_pb2*.py*")}:
        # Make every level an importable package (regular packages, not namespace packages).
        d = pkg_dir
        while d != out:
            init = d / "__init__.py"
            if not init.exists():
                init.write_text("")
            d = d.parent
    return sorted(p for p in gen_root.rglob("*_pb2*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root (default: protos/)")
    args = parser.parse_args()
    if args.out == PROTO_ROOT:
        # Regenerate from scratch so deleted protos leave no stale modules.
        for stale in (PROTO_ROOT / "versus").rglob("*_pb2*"):
            stale.unlink()
    files = generate(args.out)
    print(f"generated {len(files)} files under {args.out}")


if __name__ == "__main__":
    main()
