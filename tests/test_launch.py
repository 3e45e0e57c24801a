"""The process launcher the demos and end-to-end tests use."""

from __future__ import annotations

from pathlib import Path

import pytest

from versus_cli.launch import ServiceProcess

pytestmark = pytest.mark.slow


def test_entering_a_started_process_launches_no_second_one(tmp_path: Path) -> None:
    svc = ServiceProcess("ranker", ["--db", f"sqlite:///{tmp_path / 'r.db'}", "--drain-delay-s", "0"]).start(60)
    first = svc.proc
    with svc as entered:
        assert entered is svc and svc.proc is first  # not relaunched (the first would be orphaned)
    assert first.poll() is not None  # and leaving the block drained it
