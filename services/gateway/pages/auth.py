"""The report pages hold the gateway's token (aiohttp middleware and the login form).

With a token set, every page but ``/healthz``, ``/favicon.ico`` and ``/login`` needs it: programs send
``Authorization: Bearer TOKEN``; browsers post it once to the login form, which sets an ``HttpOnly``,
``SameSite=Strict`` session cookie (an HMAC of the token, never the token itself). Because the cookie is
never sent with a request that another site starts, and live runs start only by POST, a link or a form
on another site cannot make a signed-in browser start probes (no CSRF by cookie). Without a token the
pages are open — which the gateway's config allows only when the deployer opts in (GATEWAY_HTTP_OPEN).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.gateway.pages import render

SESSION_COOKIE = "versus_session"
#: Paths answered without the token.
OPEN_PATHS = frozenset({"/healthz", "/healthz.json", "/favicon.ico", "/login"})
TOKEN = web.AppKey("pages_token", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def session_value(token: str) -> str:
    """The cookie's value: derived from the token, so the cookie never carries the token itself."""
    return hmac.new(token.encode(), b"versus gateway pages session v1", hashlib.sha256).hexdigest()


def authorized(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(token).encode())


def _next(target: str) -> str:
    """Only a path on this site (no scheme, no '//host'), so the form cannot redirect elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


async def _login_page(next_path: str, message: str, status: int) -> web.Response:
    text = render.render_page("login.html.j2", next_path=_next(next_path), message=message)
    response = web.Response(text=text, content_type="text/html", charset="utf-8", status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="versus"'
    return response


async def unauthorized(request: web.Request) -> web.Response:
    """401: JSON for programs (``.json`` paths, or a bearer header was sent), the login form for people."""
    if request.path.endswith(".json") or request.headers.get("Authorization"):
        body = {"error": {"code": 401, "status": "Unauthorized", "reason": "UNAUTHENTICATED",
                          "message": "this gateway's pages need its token: 'Authorization: Bearer TOKEN'"}}
        return web.json_response(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="versus"'})
    return await _login_page(request.path_qs, "This gateway's pages need its token.", 401)


def token_middleware(token: str):
    """The middleware that refuses every request without the token (``token`` non-empty)."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or authorized(request, token):
            return await handler(request)
        return await unauthorized(request)

    return require_token


async def login_form(request: web.Request) -> web.Response:
    return await _login_page(request.query.get("next", "/"), "", 200)


async def login(request: web.Request) -> web.Response:
    """POST /login: the right token sets the session cookie and goes on to ``next``; a wrong one is 401."""
    form = await request.post()
    token = request.app[TOKEN]
    given = str(form.get("token", ""))
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        return await _login_page(str(form.get("next", "/")), "Wrong token.", 401)
    response = web.HTTPSeeOther(_next(str(form.get("next", "/"))))
    response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="Strict", path="/",
                        secure=request.secure)
    raise response


def add_auth(app: web.Application, token: str) -> None:
    """Require ``token`` on ``app``'s pages (nothing when it is empty) and add the login form."""
    app[TOKEN] = token
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    if token:
        app.middlewares.append(token_middleware(token))
