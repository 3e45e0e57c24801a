"""The gateway's web pages (aiohttp, on the gateway's own event loop).

Pages, each also as JSON with a ``.json`` suffix (protobuf JSON with proto field names):

- ``/`` (``/index.json``): the catalog and a form to pick two models; the form POSTs to ``/compare``,
  which redirects to ``/compare/<A>-vs-<B>`` (303 to a GET without live probes, 307 — the POST kept —
  with them). No JavaScript.
- ``/compare/<A>-vs-<B>[-vs-<C>…]``: 2..4 catalog ids (ids never contain ``-vs-``). A GET shows the
  catalog evidence and cached probe results; live probes (``live=1``) and the head-to-head (``h2h=1``)
  start only by POST, never by a GET link (a GET asking for them is 405). Pages never record matches.
- ``/login``: with a token set, every page needs it (``services.gateway.pages.auth``).
- ``/leaderboard?task=``: ratings with 95% interval bars.
- ``/routes``: the shadow and canary routes this gateway serves; ``/routes/<NAME>``: one route's page
  (``services.gateway.pages.route_render``), through the engine's ``list_routes()`` and ``get_route(name)``.
- ``/healthz``: the process answers.

Errors map in one table: InvalidArgument 400, NotFound 404, ResourceExhausted 429, Unavailable 503,
DeadlineExceeded 504, each an error page (or JSON) with the error's own, bounded message; anything else
is 500 with a generic message and the traceback in the log only. Every response carries a
Content-Security-Policy that allows inline styles and ``data:`` images and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote as url_quote

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from versus.gateway.v1 import gateway_pb2

from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    VersusError,
    quote,
)
from services.gateway.pages import auth as pages_auth
from services.gateway.pages import charts, render, route_render

log = logging.getLogger(__name__)

#: Joins model ids in a comparison path (catalog ids never contain it).
SEPARATOR = "-vs-"
MIN_MODELS, MAX_MODELS = 2, 4
#: Domain errors → HTTP status; the first class in an error's MRO that is listed decides.
STATUS: dict[type[VersusError], int] = {
    InvalidArgument: 400,
    NotFound: 404,
    ResourceExhausted: 429,
    Unavailable: 503,
    DeadlineExceeded: 504,
}
INTERNAL_MESSAGE = "The page could not be built; the error is in the gateway log."
SECURITY_HEADERS = {
    "Content-Security-Policy": render.CSP + "; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TRUE = frozenset({"1", "true", "yes", "on"})

GATEWAY = web.AppKey("gateway", object)
COMPARE_TIMEOUT = web.AppKey("compare_timeout_s", object)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def wants_json(request: web.Request) -> bool:
    """JSON for *.json pages and for the protocol's REST paths (the routes' /v2/... front door)."""
    return request.path.endswith(".json") or request.path.startswith("/v2/")


def proto_json(message: Message, status: int = 200) -> web.Response:
    return web.json_response(json_format.MessageToDict(message, preserving_proto_field_name=True), status=status)


async def html(render_fn: Callable[..., str], *args: Any, http_status: int = 200, **kwargs: Any) -> web.Response:
    """Render off the event loop (charts and templates take CPU time the gRPC side should not wait for)."""
    text = await asyncio.to_thread(render_fn, *args, **kwargs)
    return web.Response(text=text, content_type="text/html", charset="utf-8", status=http_status)


def status_of(exc: VersusError) -> int | None:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


def _flag(request: web.Request, name: str, form: Any = None) -> bool:
    return str((form or {}).get(name, "") or request.query.get(name, "")).lower() in TRUE


def _no_live_by_get(request: web.Request) -> None:
    """Live probes and head-to-heads cost work and must not start from a link: POST only."""
    if request.method == "GET" and (_flag(request, "live") or _flag(request, "h2h")):
        raise web.HTTPMethodNotAllowed(request.method, ["POST"], text="Live probes and head-to-heads start only by "
                                       "POST (the start page's form), never by a link.")


def parse_pair(pair: str) -> list[str]:
    """``A-vs-B[-vs-C…]`` → ``[A, B, …]``; a malformed path is InvalidArgument on ``path``."""
    ids = pair.split(SEPARATOR)
    if not MIN_MODELS <= len(ids) <= MAX_MODELS or not all(ids):
        raise InvalidArgument("path", f"expected {MIN_MODELS} to {MAX_MODELS} model ids joined by '{SEPARATOR}' "
                                      f"(e.g. /compare/A-vs-B), got {quote(pair)}")
    return ids


def default_pair(models: list[gateway_pb2.CatalogModel]) -> tuple[str, str]:
    """The form's preselection: a served model and, preferably, a served one of another type."""
    served = [m for m in models if m.served_by] or list(models)
    if not served:
        return "", ""
    first = served[0]
    others = [m for m in served if m.id != first.id and m.type != first.type]
    others += [m for m in served if m.id != first.id] + [m for m in models if m.id != first.id]
    return first.id, (others[0].id if others else "")


# -- pages ------------------------------------------------------------------------------------------


async def start_page(request: web.Request) -> web.Response:
    catalog = await request.app[GATEWAY].list_models()
    if wants_json(request):
        return proto_json(catalog)
    models = list(catalog.models)
    first, second = default_pair(models)
    return await html(render.render_page, "start.html.j2", models=models, first=first, second=second)


async def pick(request: web.Request) -> web.StreamResponse:
    """The start page's form (``a``, ``b``, ``live``): → ``/compare/A-vs-B``; a live run keeps its POST (307)."""
    _no_live_by_get(request)
    form = await request.post() if request.method == "POST" else request.query
    ids = [str(form.get(name, "")).strip() for name in ("a", "b")]
    for name, value in zip(("a", "b"), ids, strict=True):
        if not value:
            raise InvalidArgument(name, "pick a model")
    location = "/compare/" + SEPARATOR.join(url_quote(i, safe="") for i in ids)
    if request.method == "POST" and (_flag(request, "live", form) or _flag(request, "h2h", form)):
        raise web.HTTPTemporaryRedirect(location)
    raise web.HTTPSeeOther(location)


async def compare_page(request: web.Request) -> web.Response:
    pair = request.match_info["pair"]
    as_json = pair.endswith(".json")
    ids = parse_pair(pair.removesuffix(".json"))
    _no_live_by_get(request)
    form = await request.post() if request.method == "POST" else None
    probes = gateway_pb2.ProbeOptions(live=_flag(request, "live", form), head_to_head=_flag(request, "h2h", form))
    comparison = await request.app[GATEWAY].compare(
        gateway_pb2.CompareRequest(model_ids=ids, probes=probes), timeout_s=request.app[COMPARE_TIMEOUT])
    if as_json:
        return proto_json(comparison)
    return await html(render.render_html, comparison, links=True)


async def leaderboard_page(request: web.Request) -> web.Response:
    board = await request.app[GATEWAY].leaderboard(request.query.get("task", ""))
    if wants_json(request):
        return proto_json(board)
    return await html(_leaderboard_html, board)


def _leaderboard_html(board: Any) -> str:
    return render.render_page("leaderboard.html.j2", board=board, chart=charts.leaderboard_svg(board))


async def routes_page(request: web.Request) -> web.Response:
    views = list(await request.app[GATEWAY].list_routes())
    if wants_json(request):
        return proto_json(gateway_pb2.ListRoutesResponse(routes=views))
    return await html(route_render.render_routes_html, views)


async def route_page(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    as_json = name.endswith(".json")
    view = await request.app[GATEWAY].get_route(name.removesuffix(".json"))
    if as_json:
        return proto_json(view)
    return await html(route_render.render_route_html, view, links=True)


async def healthz(request: web.Request) -> web.Response:
    if wants_json(request):
        return web.json_response({"status": "ok"})
    return web.Response(text="ok\n")


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


# -- errors and headers -----------------------------------------------------------------------------


async def error_response(request: web.Request, status: int, message: str, reason: str = "") -> web.Response:
    title = _reason_phrase(status)
    if wants_json(request):
        body = {"error": {"code": status, "status": title, "reason": reason, "message": message}}
        return web.json_response(body, status=status)
    return await html(render.render_page, "error.html.j2", http_status=status, status=status, title=title,
                      message=message)


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One place where failures become pages: the status table, then a generic 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = await error_response(request, exc.status, exc.text if exc.status != 404 else "No such page.")
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except VersusError as exc:
        status = status_of(exc)
        if status is None:
            log.exception("page %s failed", request.path)
            return await error_response(request, 500, INTERNAL_MESSAGE, "INTERNAL")
        response = await error_response(request, status, exc.message, exc.reason)
        if exc.retry_after_s:
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return response
    except Exception:
        log.exception("page %s failed", request.path)
        return await error_response(request, 500, INTERNAL_MESSAGE, "INTERNAL")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


# -- app --------------------------------------------------------------------------------------------


def create_web_app(gateway: Any, *, compare_timeout_s: float | None = None, token: str = "") -> web.Application:
    """The pages over ``gateway`` (the engine: ``compare``, ``list_models``, ``leaderboard``, ``list_routes``,
    ``get_route``); with ``token``
    every page but health needs it."""
    app = web.Application(middlewares=[errors])
    pages_auth.add_auth(app, token)
    app[GATEWAY] = gateway
    app[COMPARE_TIMEOUT] = compare_timeout_s
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", start_page)
    app.router.add_get("/index.json", start_page)
    app.router.add_get("/compare", pick)
    app.router.add_post("/compare", pick)
    app.router.add_get("/compare/{pair}", compare_page)
    app.router.add_post("/compare/{pair}", compare_page)
    app.router.add_get("/leaderboard", leaderboard_page)
    app.router.add_get("/leaderboard.json", leaderboard_page)
    app.router.add_get("/routes", routes_page)
    app.router.add_get("/routes.json", routes_page)
    app.router.add_get("/routes/{name}", route_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/healthz.json", healthz)
    app.router.add_get("/favicon.ico", favicon)
    return app


async def start_web(app: web.Application, host: str, port: int, ssl_context: Any = None
                    ) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0 picks a free port; HTTPS with ``ssl_context``); returns the runner
    and the bound port."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


async def stop_web(runner: web.AppRunner) -> None:
    """Stop serving and close open connections."""
    await runner.cleanup()
