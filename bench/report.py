"""Write one benchmark's section of docs/BENCHMARKS.md (each bench owns the text between its markers)."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.loadgen import LoadResult, run_clients

__all__ = ["LoadResult", "git_rev", "machine", "median", "reexec_with", "run_clients", "write_section"]

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
HEADER = """# Benchmarks

Each section is written by the script it names, with the command that produced it. Figures are
medians over repeats on a noisy shared machine; compare ratios inside one section (same run), not
absolute numbers across sections or machines.

Load comes from `bench/loadgen.py` (`bench.report.run_clients`): asyncio coroutines on one thread in a
process of their own, sending pre-serialized requests, reporting their own CPU share.
"""


def machine() -> str:
    """One line describing where the figures came from."""
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPUs ({cpu}), {gpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- bench:NAME -->`` markers."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(f"wrote section {name!r} of {DOC}")


def median(values: list[float]) -> float:
    return statistics.median(values)


def reexec_with(env: dict[str, str]) -> None:
    """Restart this script with ``env`` set (glibc reads malloc settings at process start)."""
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
