"""``make demo-shadow`` end to end: Versus' digits ViT as a route's primary, every request mirrored to tritonserver
serving the same network (agreement >= 0.99 must hold) and, on a second route, to the 2-epoch network (it must be
violated); the decisions printed with the pairs they took, the pages written, every process drained."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODELS
from test_triton import needs_tritonserver

pytestmark = pytest.mark.slow

DECISION = re.compile(r"^(?P<route>[\w-]+): agreement >= 0\.99 (?P<state>HOLDS|VIOLATED) after (?P<pairs>\d+) pairs "
                      r"\(interval \[(?P<lower>[\d.]+), (?P<upper>[\d.]+)\]", re.M)
SOURCES = re.compile(r"^(?P<route>[\w-]+): (?P<pairs>\d+) pairs from (?P<images>\d+) distinct images "
                     r"\((?P<sent>\d+) requests .*?(?P<dropped>\d+) mirrors dropped, (?P<failed>\d+) requests failed",
                     re.M)


def test_make_demo_shadow_reaches_both_decisions(tmp_path: Path) -> None:
    needs_tritonserver()
    out = tmp_path / "demo-shadow"
    proc = subprocess.run([sys.executable, "-m", "versus_cli", "demo", "shadow", "--models-dir", str(MODELS),
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    decisions = {m["route"]: m for m in DECISION.finditer(proc.stdout)}
    sources = {m["route"]: m for m in SOURCES.finditer(proc.stdout)}
    assert set(decisions) == set(sources) == {"digits-triton", "digits-weak"}, proc.stdout
    # The claim: the same network agrees (the interval lies above the bound), the 2-epoch one does not (below it).
    same, weak = decisions["digits-triton"], decisions["digits-weak"]
    assert same["state"] == "HOLDS" and float(same["lower"]) >= 0.99
    assert weak["state"] == "VIOLATED" and float(weak["upper"]) < 0.99
    # "agreement >= 0.99 holds" takes several hundred agreeing pairs: more than one pass over the 360 digits, so
    # images were replayed, and the pairs came from at most the 360 distinct ones.
    assert int(same["pairs"]) > 360
    for route, m in sources.items():
        assert int(m["failed"]) == 0 and int(m["dropped"]) == 0, route
        assert int(decisions[route]["pairs"]) <= int(m["pairs"]) <= int(m["sent"])
        assert 0 < int(m["images"]) <= 360
    assert int(sources["digits-triton"]["images"]) == 360
    # Both decisions on the page and in the report, with the pairs they took.
    for route, state in (("digits-triton", "holds"), ("digits-weak", "violated")):
        html = (out / f"route-{route}.html").read_text()
        md = (out / f"route-{route}.md").read_text()
        assert html.lstrip().lower().startswith("<!doctype html") and route in html
        assert re.search(rf"agreement ≥ 0\.99 \| \*\*{state}\*\*", md), md[:2000]
        took = re.compile(rf"after ({int(decisions[route]['pairs'])}|{int(decisions[route]['pairs']):,}) pairs")
        assert f"{state} at " in md and took.search(md) and took.search(html)
    assert "exited with codes {'gateway': 0, 'ranker': 0, 'vit': 0}" in proc.stderr
