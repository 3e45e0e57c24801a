"""The route page (``services.gateway.pages.route_render``) on hand-built RouteViews — no state yet, undecided,
holds, violated, rolled back, hostile strings — and the ``/routes`` pages of the web app over a stand-in engine
(``list_routes``/``get_route``, the names the gateway engine serves), with a browser check that a 20,000-character
id wraps instead of widening the page."""

from __future__ import annotations

import asyncio
import io
import json
import re

import aiohttp
import pytest
from browser import Browser
from PIL import Image
from versus.gateway.v1 import gateway_pb2 as gw
from versus.ranker.v1 import routes_pb2 as rt

from services.common.errors import NotFound
from services.gateway.pages import route_render, web

HOLDS, VIOLATED, UNDECIDED = rt.DECISION_STATE_HOLDS, rt.DECISION_STATE_VIOLATED, rt.DECISION_STATE_UNDECIDED
HOSTILE = "<script>alert('x')</script>|**bold**\n# heading"
LONG = "r" * 20_000


def png(colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


def interval(lower: float, upper: float, estimate: float, n: int, method: str = "betting (Waudby-Smith & Ramdas "
             "2023)") -> rt.SequenceInterval:
    return rt.SequenceInterval(lower=lower, upper=upper, estimate=estimate, n=n, method=method)


def declaration(name: str = "digits", mode: str = "shadow", **kw) -> rt.RouteDeclaration:
    bounds = [rt.RouteBound(metric="agreement", op=">=", value=0.99),
              rt.RouteBound(metric="p99_ratio", op="<=", value=1.10)]
    return rt.RouteDeclaration(name=name, mode=mode, share=kw.pop("share", 1.0), primary_id=kw.pop("primary", "vit"),
                               primary_identity="vit@127.0.0.1:1 model vit", candidate_id=kw.pop("candidate",
                                                                                                 "triton"),
                               candidate_identity="triton@127.0.0.1:2", bounds=bounds, alpha=0.05,
                               labels=[str(d) for d in range(10)], keep_inputs=kw.pop("keep_inputs", True), **kw)


def state(decision: int, *, rolled_back: bool = False, label: str = "3") -> rt.RouteState:
    route = declaration(mode="canary" if rolled_back else "shadow")
    s = rt.RouteState(route=route, pairs=700, rows=700, distinct_inputs=360, epoch=2, duplicates=3,
                      first_pair_at="2026-12-04T19:00:00Z", last_pair_at="2026-12-04T19:01:00Z")
    s.counters.CopyFrom(rt.RouteCounters(requests=720, mirrored=700, dropped={"queue_full": 11, "deadline": 2}))
    agree = interval(0.991, 1.0, 1.0, 700) if decision == HOLDS else interval(0.93, 0.965, 0.95, 700)
    s.agreement.CopyFrom(agree)
    s.top5_overlap.CopyFrom(interval(0.9, 1.0, 0.97, 700))
    for i in range(1, 41):
        width = 1.0 / i ** 0.5
        s.agreement_history.add(n=i * 17, lower=max(0.0, agree.estimate - width), upper=min(1.0, agree.estimate
                                + width), estimate=agree.estimate, at=f"2026-12-04T19:00:{i:02d}Z")
    d = s.decisions.add(bound=route.bounds[0], state=decision, interval=agree)
    if decision != UNDECIDED:
        d.decided_at, d.decided_after, d.decided_state = "2026-12-04T19:00:41Z", 612, decision
        d.interval_at_decision.CopyFrom(interval(0.9901, 1.0, 1.0, 612))
    s.decisions.add(bound=route.bounds[1], state=UNDECIDED,
                    interval=interval(0.2, float("inf"), 1.01, 700, "quantile (Howard & Ramdas 2022)"))
    for lat, p99 in ((s.primary_latency, 0.012), (s.candidate_latency, 0.02)):
        lat.CopyFrom(rt.LatencySummary(edges_s=[0.001 * 2 ** k for k in range(9)], counts=[0, 5, 100, 400, 150, 30,
                                                                                             10, 5], p50_s=0.006,
                                       p90_s=0.009, p99_s=p99, n=700,
                                       p99_interval=interval(0.008, float("inf"), p99, 700, "quantile")))
    s.primary_error_rate.CopyFrom(interval(0.0, 0.01, 0.0, 700))
    s.candidate_error_rate.CopyFrom(interval(0.0, 0.012, 0.001, 700))
    s.accuracy.CopyFrom(rt.LabelledAccuracy(labelled=120, primary=interval(0.8, 0.97, 0.9, 120),
                                            candidate=interval(0.7, 0.9, 0.8, 120), discordant=14, candidate_right=2,
                                            candidate_share_of_discordant=interval(0.02, 0.45, 0.14, 14),
                                            verdict="primary more accurate", mcnemar_p_fixed_n=0.0042))
    s.disagreements.add(request_id="req-kept", row=0, primary_label="3", candidate_label="8", input_digest="ab" * 32,
                        input=png(), recorded_at="2026-12-04T19:00:30Z", label=label)
    s.disagreements.add(request_id="req-digest", row=2, primary_label="1", candidate_label="7",
                        input_digest="cd" * 32, recorded_at="2026-12-04T19:00:31Z")
    if rolled_back:
        s.rolled_back, s.rolled_back_at = True, "2026-12-04T19:00:50Z"
        s.rollback_reason = "p99_ratio <= 1.1 violated"
    return s


def view(s: rt.RouteState | None = None, **kw) -> gw.RouteView:
    v = gw.RouteView(route=s.route if s is not None else declaration(), mirrors_pending=4, records_pending=9,
                     local=rt.RouteCounters(requests=360, mirrored=350, dropped={"queue_full": 5}), **kw)
    if s is not None:
        v.state.CopyFrom(s)
    return v


def section(page: str, ident: str) -> str:
    return page.split(f'<section id="{ident}">', 1)[1].split("</section>", 1)[0]


# -- rendering ------------------------------------------------------------------------------------------


def test_empty_route_says_why_there_is_no_state() -> None:
    v = view(state_error="ranker unavailable: connection refused")
    page = route_render.render_route_html(v)
    assert "ranker unavailable: connection refused" in page and 'id="no-state"' in page
    assert "No paired rows yet" in page and "No latency histogram yet" in page
    assert "declared bounds <code>agreement ≥ 0.99</code>" in page
    md = route_render.render_route_markdown(v)
    assert "> No shared state for this route yet: ranker unavailable" in md and "| this replica | 360 | 350 |" in md


@pytest.mark.parametrize(("decision", "words"), [(HOLDS, "holds"), (VIOLATED, "violated"), (UNDECIDED, "undecided")])
def test_decisions_show_state_interval_pairs_and_time(decision: int, words: str) -> None:
    page = route_render.render_route_html(view(state(decision)))
    rows = section(page, "decisions")
    assert f'<span class="mark {route_render.state_css(decision)}">{words}</span>' in rows
    assert "<code>p99_ratio ≤ 1.1</code>" in rows and "1.01 [0.2, +∞]" in rows  # an unbounded quantile side
    decided = f"{words} at 2026-12-04T19:00:41Z after 612 pairs" in rows
    assert decided == (decision != UNDECIDED)
    md = route_render.render_route_markdown(view(state(decision)))
    assert f"| agreement ≥ 0.99 | **{words}** |" in md
    chart = section(page, "agreement")
    assert chart.count("<svg") == 1 and ("after 612 pairs" in chart) == (decision != UNDECIDED)


def test_page_shows_latency_accuracy_gallery_drops_and_counts() -> None:
    page = route_render.render_route_html(view(state(HOLDS)))
    latency = section(page, "latency")
    assert latency.count("<svg") == 1 and ">20</td>" in latency and "8 [+∞" not in latency
    accuracy = section(page, "accuracy")
    assert "primary more accurate" in accuracy and "For reference only — McNemar p (fixed n) = 0.0042" in accuracy
    gallery = section(page, "disagreements")
    assert gallery.count('<img src="data:image/png;base64,') == 1 and "sha256 " + "cd" * 8 in gallery
    assert '<span class="hit">3</span>' in gallery and '<span class="miss">8</span>' in gallery
    traffic = section(page, "traffic")
    assert "mirror queue full</td><td class=\"num\">11</td><td class=\"num\">5</td>" in traffic
    assert "past the mirror deadline" in traffic and ">720<" in traffic
    assert "Epoch 2" in page and ">360</td>" in section(page, "agreement")  # distinct inputs
    md = route_render.render_route_markdown(view(state(HOLDS)))
    assert "| req-kept | 0 | 3 | 8 | 3 | kept (" in md and "| mirror queue full | 11 | 5 |" in md
    assert md.count("| 17 |") == 1 and "| 680 |" in md  # the history thinned, first and last rows kept
    assert "For reference only — McNemar p (fixed n) = 0.0042" in md


def test_rollback_banner() -> None:
    page = route_render.render_route_html(view(state(VIOLATED, rolled_back=True)))
    assert 'id="rollback"' in page and "at 2026-12-04T19:00:50Z" in page and "p99_ratio &lt;= 1.1 violated" in page
    assert 'id="rollback"' not in route_render.render_route_html(view(state(VIOLATED)))
    assert "> **Rolled back** at 2026-12-04T19:00:50Z" in route_render.render_route_markdown(
        view(state(VIOLATED, rolled_back=True)))


def test_hostile_strings_are_escaped_and_never_break_a_table() -> None:
    s = state(HOLDS, label=HOSTILE)
    s.disagreements[1].request_id = HOSTILE
    s.disagreements[1].input = b"<svg onload=alert(1)>"  # kept, but not an image: never a data: URI
    s.rollback_reason = HOSTILE
    s.rolled_back = True
    v = view(s, state_error=HOSTILE)
    v.route.primary_id = HOSTILE
    page = route_render.render_route_html(v)
    assert "<script>" not in page and "&lt;script&gt;" in page and "onload" not in page.split("<svg", 1)[0]
    assert "input kept (21 bytes, not an image)" in page and "data:image/svg" not in page
    md = route_render.render_route_markdown(v)
    assert "<script>" not in md and "\\|\\*\\*bold" not in md and "\\|**bold** # heading" in md
    table = [line for line in md.splitlines() if line.startswith("| primary |")][0]
    assert table.count(" | ") == 2, "the id's | is escaped: the row keeps its three cells"


# -- the web pages --------------------------------------------------------------------------------------


class RoutesGateway:
    """The engine's route calls (``list_routes``, ``get_route``) over fixed views."""

    def __init__(self, *views: gw.RouteView) -> None:
        self.views = {v.route.name: v for v in views}

    async def list_routes(self) -> list[gw.RouteView]:
        return list(self.views.values())

    async def get_route(self, name: str) -> gw.RouteView:
        if name not in self.views:
            raise NotFound(f"no route {name!r} on this gateway", resource_type="route", resource_name=name[:64])
        return self.views[name]


async def serve(gateway: RoutesGateway, check) -> None:
    runner, port = await web.start_web(web.create_web_app(gateway), "127.0.0.1", 0)
    try:
        await check(f"http://127.0.0.1:{port}")
    finally:
        await web.stop_web(runner)


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.content_type, await resp.text()


def test_routes_list_route_page_json_and_unknown_route() -> None:
    holds, empty = view(state(HOLDS)), view(state_error="no pairs yet")
    empty.route.name = "empty"

    async def check(base: str) -> None:
        status, kind, body = await get(f"{base}/routes")
        assert status == 200 and '<a href="/routes/digits">digits</a>' in body and "no pairs yet" in body
        assert "agreement ≥ 0.99: holds" in body and body.count("<tr>") == 3
        status, _, body = await get(f"{base}/routes/digits")
        assert status == 200 and body.count("<svg") == 2 and 'href="/routes"' in body
        status, kind, body = await get(f"{base}/routes/digits.json")
        assert status == 200 and kind == "application/json" and '"distinct_inputs": "360"' in body
        status, kind, body = await get(f"{base}/routes.json")
        assert status == 200 and [r["route"]["name"] for r in json.loads(body)["routes"]] == ["digits", "empty"]
        status, _, body = await get(f"{base}/routes/nope")
        assert status == 404 and "no route &#39;nope&#39;" in body

    asyncio.run(serve(RoutesGateway(holds, empty), check))


@pytest.mark.slow
@pytest.mark.usefixtures("requires_chromium")
def test_route_page_wraps_a_20000_character_id_at_1280_px() -> None:
    s = state(VIOLATED, rolled_back=True)
    s.disagreements[0].request_id = LONG
    s.rollback_reason = LONG
    v = view(s)
    v.route.candidate_identity = LONG

    async def check(base: str) -> None:
        async with Browser(width=1280) as b:
            await b.navigate(f"{base}/routes/digits")
            seen = await b.evaluate("""({width: document.documentElement.scrollWidth,
                charts: document.querySelectorAll('figure.chart svg').length,
                images: [...document.querySelectorAll('#disagreements img')].map(i => i.naturalWidth)})""")
            assert b.errors == [], b.log
        assert seen == {"width": 1280, "charts": 2, "images": [8]}

    asyncio.run(serve(RoutesGateway(v), check))


def test_the_list_page_of_no_routes() -> None:
    page = route_render.render_routes_html([])
    assert "serves no route" in page and re.search(r"<table", page) is None
