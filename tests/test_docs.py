"""The docs state only what can be traced: every benchmark figure has its command, a commit on main and a date."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"
SECTION = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->(?P<body>.*?)<!-- /bench:(?P=name) -->", re.S)


def _sections() -> list[tuple[str, str]]:
    return [(m["name"], m["body"]) for m in SECTION.finditer(BENCHMARKS.read_text())]


def _on_main(rev: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", rev, "HEAD"], cwd=ROOT,
                          capture_output=True).returncode == 0


def test_there_are_benchmark_sections() -> None:
    assert len(_sections()) >= 8


@pytest.mark.parametrize("name, body", _sections(), ids=[n for n, _ in _sections()])
def test_every_benchmark_section_has_command_commit_and_date(name: str, body: str) -> None:
    assert re.search(r"python bench/\w+\.py", body), f"{name}: no command"
    assert re.search(r"\b20\d\d-\d\d-\d\d\b", body), f"{name}: no date"
    revs = re.findall(r"\b(?:commit|rev|recorded in) ([0-9a-f]{7,40})\b", body)
    assert revs, f"{name}: no commit"
    if (ROOT / ".git").exists():
        missing = [r for r in revs if not _on_main(r)]
        assert not missing, f"{name}: {missing} are not commits on this branch"
