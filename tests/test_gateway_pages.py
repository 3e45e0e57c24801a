"""The gateway's web pages: in a real headless browser against a real gateway (``gateway_stack``: vit,
sd35, ranker and gateway servers on small models), and over plain HTTP for the JSON variants and the
error statuses. A few fast tests drive ``web.py`` with a stand-in engine for what a real stack cannot
be made to do on demand (an internal error, a downstream deadline)."""

from __future__ import annotations

import asyncio
import io
import logging
from urllib.parse import quote

import aiohttp
import pytest
from browser import Browser
from markupsafe import escape
from PIL import Image
from test_gateway_render import SD, VIT, comparison
from versus.gateway.v1 import gateway_pb2 as gw
from versus.ranker.v1 import ranker_pb2 as rk

from services.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from services.gateway.pages import web

needs_chromium = pytest.mark.usefixtures("requires_chromium")  # conftest: fails naming it, never skips
#: A live comparison on the small models, on a shared 2-core machine.
COMPARE_WAIT_S = 480
SECURITY = {"Content-Security-Policy": web.SECURITY_HEADERS["Content-Security-Policy"],
            "X-Content-Type-Options": "nosniff"}


def run(coro):
    return asyncio.run(coro)


async def fetch(url: str, *, redirects: bool = True, timeout: float = COMPARE_WAIT_S) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url, allow_redirects=redirects) as resp:
            return resp.status, dict(resp.headers), await resp.text()


async def post(url: str, data: dict, *, headers: dict | None = None, redirects: bool = True,
               cookies: dict | None = None) -> tuple[int, dict, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=COMPARE_WAIT_S), cookies=cookies) as session:
        async with session.post(url, data=data, headers=headers, allow_redirects=redirects) as resp:
            return resp.status, dict(resp.headers), await resp.text()


async def fetch_json(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=COMPARE_WAIT_S)) as session:
        async with session.get(url) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()


def served(catalog: dict, kind: str) -> str:
    """The first catalog model of type ``kind`` that this deployment serves live."""
    return next(m["id"] for m in catalog["models"] if m.get("type") == kind and m.get("served_by"))


# -- in a browser, against the real stack ---------------------------------------------------------------


@pytest.mark.slow
@needs_chromium
def test_start_page_lists_the_catalog_with_no_console_errors(gateway_stack) -> None:
    _, catalog = run(fetch_json(gateway_stack.http_url + "/index.json"))
    ids = [m["id"] for m in catalog["models"]]
    assert VIT in ids and SD in ids

    async def visit() -> tuple[dict, list[str]]:
        async with Browser() as b:
            await b.navigate(gateway_stack.http_url + "/")
            seen = await b.evaluate("""({
                title: document.title,
                a: [...document.querySelectorAll('#model-a option')].map(o => o.value),
                b: [...document.querySelectorAll('#model-b option')].map(o => o.value),
                rows: [...document.querySelectorAll('#catalog tbody tr code')].map(c => c.textContent),
                live: document.querySelector('#live').type })""")
            return seen, b.errors

    seen, errors = run(visit())
    assert errors == []
    assert seen["a"] == ids and seen["b"] == ids and seen["rows"] == ids
    assert seen["live"] == "checkbox" and "Versus" in seen["title"]


@pytest.mark.slow
@needs_chromium
def test_user_goes_from_the_start_page_to_a_live_comparison(gateway_stack, tmp_path) -> None:
    _, catalog = run(fetch_json(gateway_stack.http_url + "/index.json"))
    a, b = served(catalog, "image-classification"), served(catalog, "text-to-image")

    async def journey() -> tuple[dict, bytes, list[str], list[str]]:
        async with Browser() as br:
            await br.navigate(gateway_stack.http_url + "/")
            await br.evaluate(f"document.getElementById('model-a').value = {a!r};"
                              f"document.getElementById('model-b').value = {b!r};"
                              "document.getElementById('live').checked = true; true")
            await br.act_and_wait_load("document.getElementById('compare').click(); true", timeout=COMPARE_WAIT_S)
            page = await br.evaluate("""({
                path: location.pathname, search: location.search, title: document.title,
                facts: document.querySelectorAll('table.facts tbody tr').length,
                images: [...document.querySelectorAll('#judgements img')].map(i => ({
                    src: i.src.slice(0, 22), w: i.naturalWidth, h: i.naturalHeight})),
                charts: [...document.querySelectorAll('figure.chart svg')].map(s => s.getBoundingClientRect().width),
                verdict: document.querySelector('p.verdict').textContent,
                marks: document.querySelectorAll('table.capabilities .mark').length })""")
            return page, await br.screenshot(), br.errors, br.log

    page, png, errors, log = run(journey())
    assert errors == [], log
    assert page["path"] == f"/compare/{a}-vs-{b}" and page["search"] == ""  # the live run came by POST (307)
    assert page["facts"] > 0 and page["marks"] > 0 and page["verdict"].strip()
    assert page["images"] and all(i["src"] == "data:image/png;base64," and i["w"] > 0 and i["h"] > 0
                                  for i in page["images"]), page["images"]
    # the sub-score chart; no leaderboard chart: the stack's duels are mechanism checks, kept off real boards
    assert len(page["charts"]) == 1 and all(w > 200 for w in page["charts"])
    shot = tmp_path / "comparison.png"
    shot.write_bytes(png)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(shot)
    assert image.format == "PNG" and image.width == 1280 and image.height > 1500
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 50  # not a blank page


@pytest.mark.slow
@needs_chromium
def test_leaderboard_page_shows_its_chart(gateway_stack) -> None:
    async def visit() -> tuple[dict, list[str]]:
        async with Browser() as b:
            await b.navigate(gateway_stack.http_url + "/leaderboard")
            seen = await b.evaluate("""({
                charts: [...document.querySelectorAll('#leaderboard-chart svg')].map(
                    s => s.getBoundingClientRect().width),
                heading: document.querySelector('h1').textContent })""")
            return seen, b.errors

    seen, errors = run(visit())
    assert errors == []
    assert seen["heading"].startswith("Leaderboard") and len(seen["charts"]) == 1 and seen["charts"][0] > 200


# -- over HTTP, against the real stack ------------------------------------------------------------------


@pytest.mark.slow
def test_json_variants_return_json(gateway_stack) -> None:
    base = gateway_stack.http_url
    status, catalog = run(fetch_json(base + "/index.json"))
    assert status == 200 and {VIT, SD} <= {m["id"] for m in catalog["models"]}
    status, board = run(fetch_json(base + "/leaderboard.json"))
    assert status == 200 and isinstance(board, dict)
    status, c = run(fetch_json(f"{base}/compare/{VIT}-vs-{SD}.json"))
    assert status == 200 and c["model_ids"] == [VIT, SD]
    assert [m["entry"]["id"] for m in c["models"]] == [VIT, SD] and c["verdict"]
    status, health = run(fetch_json(base + "/healthz.json"))
    assert (status, health) == (200, {"status": "ok"})


@pytest.mark.slow
def test_unknown_model_is_404_and_malformed_path_400(gateway_stack) -> None:
    base = gateway_stack.http_url
    status, headers, body = run(fetch(f"{base}/compare/{VIT}-vs-no-such-model"))
    assert status == 404 and "no-such-model" in body and headers["Content-Type"].startswith("text/html")
    assert all(headers[k] == v for k, v in SECURITY.items())
    status, error = run(fetch_json(f"{base}/compare/{VIT}-vs-no-such-model.json"))
    assert status == 404 and error["error"]["code"] == 404 and "no-such-model" in error["error"]["message"]
    for path in (f"/compare/{VIT}", f"/compare/{VIT}-vs-", "/compare/a-vs-b-vs-c-vs-d-vs-e",
                 f"/compare/{VIT}-vs-Not%20An%20Id", f"/compare/{quote('<script>x</script>', safe='')}-vs-{SD}"):
        status, _, body = run(fetch(base + path))
        assert status == 400, (path, body)
        assert "<script>x" not in body
    status, _, body = run(fetch(base + "/no/such/page"))
    assert status == 404 and "No such page." in body


# -- web.py with a stand-in engine (fast) -----------------------------------------------------------------


class MemoryGateway:
    """Answers from memory, or raises ``error`` for every call."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.requests: list[tuple[gw.CompareRequest, float | None]] = []

    async def compare(self, request, *, timeout_s=None, progress=None) -> gw.Comparison:
        self.requests.append((request, timeout_s))
        if self.error:
            raise self.error
        return comparison()

    async def list_models(self) -> gw.ListModelsResponse:
        if self.error:
            raise self.error
        return gw.ListModelsResponse(models=[gw.CatalogModel(id=SD, display_name="SD3.5 Large", type="text-to-image",
                                                             served_by="sd35/large"),
                                             gw.CatalogModel(id=VIT, display_name=VIT, type="image-classification",
                                                             served_by="vit")])

    async def leaderboard(self, task: str = "") -> rk.GetLeaderboardResponse:
        if self.error:
            raise self.error
        return rk.GetLeaderboardResponse(task=task)


async def serve(gateway: MemoryGateway, check, **kwargs) -> None:
    runner, port = await web.start_web(web.create_web_app(gateway, **kwargs), "127.0.0.1", 0)
    try:
        assert port > 0
        await check(f"http://127.0.0.1:{port}")
    finally:
        await web.stop_web(runner)


@pytest.mark.parametrize(("error", "status"), [
    (InvalidArgument("model_ids[1]", "must match [a-z0-9._-]"), 400),
    (NotFound("model 'x' is not in the catalog", resource_type="model", resource_name="x"), 404),
    (Unavailable("ranker: failed to connect <b>now</b>"), 503),
    (DeadlineExceeded("the comparison ran past its deadline"), 504),
])
def test_errors_map_to_statuses_with_their_message(error, status) -> None:
    async def check(base: str) -> None:
        got, headers, body = await fetch(f"{base}/compare/{VIT}-vs-{SD}")
        assert got == status and str(escape(error.message)) in body
        assert "<b>now</b>" not in body and all(headers[k] == v for k, v in SECURITY.items())
        got, payload = await fetch_json(f"{base}/compare/{VIT}-vs-{SD}.json")
        assert got == status and payload["error"]["message"] == error.message
        assert payload["error"]["reason"] == error.reason
        got, _, _ = await fetch(f"{base}/leaderboard")
        assert got == status

    run(serve(MemoryGateway(error), check))


def test_an_internal_error_is_500_with_a_generic_message(caplog) -> None:
    async def check(base: str) -> None:
        for path in ("/", "/index.json", "/leaderboard"):
            got, _, body = await fetch(base + path)
            assert got == 500 and web.INTERNAL_MESSAGE in body and "secret-detail" not in body

    with caplog.at_level(logging.ERROR, logger="services.gateway.pages.web"):
        run(serve(MemoryGateway(RuntimeError("secret-detail")), check))
    assert "secret-detail" in caplog.text and "Traceback" in caplog.text


def test_form_redirects_to_the_comparison_and_pages_carry_security_headers() -> None:
    gateway = MemoryGateway()

    async def check(base: str) -> None:
        got, headers, _ = await post(f"{base}/compare", {"a": VIT, "b": SD, "live": "1"}, redirects=False)
        assert got == 307 and headers["Location"] == f"/compare/{VIT}-vs-{SD}"  # the POST is kept
        got, headers, _ = await post(f"{base}/compare", {"a": VIT, "b": SD}, redirects=False)
        assert got == 303 and headers["Location"] == f"/compare/{VIT}-vs-{SD}"
        got, _, _ = await fetch(f"{base}/compare?a={VIT}", redirects=False)
        assert got == 400
        for link in (f"/compare/{VIT}-vs-{SD}?live=1", f"/compare/{VIT}-vs-{SD}?h2h=1",
                     f"/compare?a={VIT}&b={SD}&live=1"):
            got, headers, _ = await fetch(base + link, redirects=False)
            assert got == 405 and headers["Allow"] == "POST", link  # no live run from a link
        assert gateway.requests == []
        got, headers, body = await post(f"{base}/compare/{VIT}-vs-{SD}", {"live": "1", "h2h": "1"})
        assert got == 200 and body.count("<svg") == 2 and 'href="/leaderboard"' in body
        assert all(headers[k] == v for k, v in SECURITY.items())
        got, headers, body = await fetch(base + "/")
        assert got == 200 and f'<option value="{SD}" selected>' in body and f'<option value="{VIT}" selected>' in body
        got, _, _ = await fetch(base + "/favicon.ico")
        assert got == 204
        got, _, body = await fetch(base + "/healthz")
        assert (got, body) == (200, "ok\n")

    run(serve(gateway, check, compare_timeout_s=12.5))
    request, timeout = gateway.requests[0]
    assert list(request.model_ids) == [VIT, SD] and timeout == 12.5
    assert request.probes.live and request.probes.head_to_head and not request.probes.record_matches


@pytest.mark.slow
@needs_chromium
def test_report_page_has_no_console_errors_and_shows_images(tmp_path) -> None:
    async def check(base: str) -> None:
        async with Browser() as b:
            await b.navigate(f"{base}/compare/{VIT}-vs-{SD}")
            seen = await b.evaluate("""({
                images: [...document.querySelectorAll('#judgements img')].map(i => i.naturalWidth),
                charts: document.querySelectorAll('figure.chart svg').length,
                hostile: [...document.querySelectorAll('table.capabilities td')].some(
                    td => td.textContent.includes("<script>alert('pwned')</script>")) })""")
            png = await b.screenshot()
            assert b.errors == [], b.log
        assert seen == {"images": [32, 32], "charts": 2, "hostile": True}
        (tmp_path / "report.png").write_bytes(png)
        assert Image.open(io.BytesIO(png)).format == "PNG"

    run(serve(MemoryGateway(), check))


# -- the pages hold the token ---------------------------------------------------------------------------

TOKEN = "s3cret-token"


def test_pages_need_the_token_without_it_or_with_a_wrong_one() -> None:
    gateway = MemoryGateway()

    async def check(base: str) -> None:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            async with aiohttp.ClientSession(headers=headers) as session:
                for path in ("/", "/index.json", f"/compare/{VIT}-vs-{SD}", "/leaderboard"):
                    async with session.get(base + path) as resp:
                        assert resp.status == 401, (headers, path)
                        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="versus"'
                        body = await resp.text()
                        assert ('id="login"' in body) == (not headers and not path.endswith(".json")), body
                async with session.post(f"{base}/compare/{VIT}-vs-{SD}", data={"live": "1"}) as resp:
                    assert resp.status == 401
        for cookie in ({"versus_session": "forged"}, {"versus_session": TOKEN}):
            got, _, _ = await post(f"{base}/compare/{VIT}-vs-{SD}", {"live": "1"}, cookies=cookie)
            assert got == 401, cookie
        got, headers, body = await post(f"{base}/login", {"token": "wrong", "next": "/"}, redirects=False)
        assert got == 401 and "Set-Cookie" not in headers and "Wrong token." in body
        got, _, body = await fetch(base + "/healthz")  # health stays open
        assert (got, body) == (200, "ok\n")

    run(serve(gateway, check, token=TOKEN))
    assert gateway.requests == []  # nothing ran


def test_pages_open_with_the_bearer_token_or_the_login_cookie() -> None:
    gateway = MemoryGateway()

    async def check(base: str) -> None:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=bearer) as session:
            async with session.get(base + "/index.json") as resp:
                assert resp.status == 200 and (await resp.json())["models"]
            async with session.post(f"{base}/compare/{VIT}-vs-{SD}.json", data={"live": "1"}) as resp:
                assert resp.status == 200
        got, headers, _ = await post(f"{base}/login", {"token": TOKEN, "next": f"/compare/{VIT}-vs-{SD}"},
                                     redirects=False)
        assert got == 303 and headers["Location"] == f"/compare/{VIT}-vs-{SD}"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        session_cookie = {"versus_session": cookie.split(";", 1)[0].split("=", 1)[1]}
        got, _, body = await post(f"{base}/compare/{VIT}-vs-{SD}", {"live": "1"}, cookies=session_cookie)
        assert got == 200 and "<svg" in body
        got, headers, _ = await post(f"{base}/login", {"token": TOKEN, "next": "//evil.example/"}, redirects=False)
        assert headers["Location"] == "/"  # never off-site

    run(serve(gateway, check, token=TOKEN))
    assert [r.probes.live for r, _ in gateway.requests] == [True, True]


@pytest.mark.slow
@needs_chromium
def test_a_browser_signs_in_and_never_sees_the_session_cookie() -> None:
    async def check(base: str) -> None:
        async with Browser() as b:
            await b.navigate(f"{base}/leaderboard")
            assert await b.evaluate("!!document.getElementById('login')")
            await b.act_and_wait_load(f"document.getElementById('token').value = {TOKEN!r};"
                                      "document.getElementById('sign-in').click(); true")
            seen = await b.evaluate("({path: location.pathname, cookie: document.cookie, "
                                    "login: !!document.getElementById('login')})")
            unexpected = [e for e in b.errors if "status of 401 (Unauthorized)" not in e]  # the first, unsigned load
            assert unexpected == [] and len(b.errors) == 1, b.log
        assert seen == {"path": "/leaderboard", "cookie": "", "login": False}  # HttpOnly: not readable by script

    run(serve(MemoryGateway(), check, token=TOKEN))


def test_pages_are_served_over_tls(tls_files) -> None:
    import ssl

    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls_files["server.crt"], tls_files["server.key"])
    client = ssl.create_default_context(cafile=str(tls_files["ca.crt"]))

    async def go() -> None:
        runner, port = await web.start_web(web.create_web_app(MemoryGateway(), token=TOKEN), "127.0.0.1", 0,
                                           ssl_context=server)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"https://localhost:{port}/index.json", ssl=client,
                                       headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                    assert resp.status == 200
        finally:
            await web.stop_web(runner)

    run(go())


@pytest.mark.parametrize(("settings", "fragment"), [
    ({}, "--http-port (GATEWAY_HTTP_PORT): the report pages can start live runs; set --token (GATEWAY_TOKEN)"),
    ({"GATEWAY_TOKEN": TOKEN}, "--http-host (GATEWAY_HTTP_HOST): with a token the report pages are served over TLS"),
    ({"GATEWAY_TOKEN": TOKEN, "GATEWAY_HTTP_HOST": "10.0.0.5"}, "not to '10.0.0.5' in plain HTTP"),
])
def test_pages_that_would_not_hold_the_token_refuse_to_start(settings: dict, fragment: str) -> None:
    from services.common.errors import ConfigError
    from services.gateway.config import GatewayConfig

    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_env(settings)
    assert fragment in info.value.message and "\n" not in info.value.message


def test_pages_start_on_loopback_tls_or_by_explicit_opt_in(tls_files) -> None:
    from services.gateway.config import GatewayConfig

    for settings in ({"GATEWAY_TOKEN": TOKEN, "GATEWAY_HTTP_HOST": "127.0.0.1"},
                     {"GATEWAY_TOKEN": TOKEN, "GATEWAY_HTTP_HOST": "::1"},
                     {"GATEWAY_TOKEN": TOKEN, "GATEWAY_TLS_CERT": str(tls_files["server.crt"]),
                      "GATEWAY_TLS_KEY": str(tls_files["server.key"])},
                     {"GATEWAY_HTTP_OPEN": "true"}, {"GATEWAY_HTTP_PORT": "-1"}):
        GatewayConfig.from_env(settings)
