"""Access control of the web app: the access token, the session cookie derived from it, the ASGI guard.

Security, as Jupyter does it: the app always has an access token (``deepsynth serve`` makes a random
one per launch unless one is configured). Every ``/api/`` request must carry it as
``Authorization: Bearer <token>``, or the session cookie a browser gets by opening ``/?token=<token>``
once (or by ``POST /api/session`` with the bearer header); without it the answer is 401. The cookie is
HttpOnly, SameSite=Strict and holds an HMAC of the token, never the token. Open without the token: the
page ``/`` itself (a sign-in form until the cookie is set), the static assets and ``/openapi.json``
(the same for every install; no state). Requests that change state must come from the app's own
origin (a cross-site form post is refused, 403), and the Host allow-list (set by
:func:`deepsynth.web.server.serve` on loopback) defeats DNS rebinding (403).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from deepsynth.web.http import error as _error

# The cookie's name carries a fingerprint of the token: two servers on one host (cookies ignore the
# port) keep their own sessions instead of overwriting each other's.
SESSION_COOKIE = "deepsynth_session"
MAX_JSON_BODY = 1024 * 1024
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _login_page() -> str:
    return """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>DeepSynth — sign in</title>
<link rel="stylesheet" href="/static/style.css"></head><body><main class="login">
<h1>DeepSynth</h1><p>Open the address <code>deepsynth serve</code> printed (it ends in <code>?token=…</code>),
or paste its access token (or your DEEPSYNTH_ACCESS_TOKEN) here.</p>
<form id="login-form"><input id="access-token" type="password" autocomplete="current-password" placeholder="access token">
<button id="login-button" type="submit">Sign in</button></form><p id="login-error" class="error"></p>
<script src="/static/login.js"></script></main></body></html>"""


def _session_value(access_token: str) -> str:
    """The session cookie's value: derived from the access token, so the cookie never holds the token."""
    return hmac.new(access_token.encode(), b"deepsynth web session", hashlib.sha256).hexdigest()


def _cookie_name(access_token: str) -> str:
    return f"{SESSION_COOKIE}_{_session_value(access_token)[:12]}"


def set_session_cookie(response: Response, access_token: str) -> None:
    response.set_cookie(_cookie_name(access_token), _session_value(access_token), httponly=True,
                        samesite="strict", path="/")


def _token_ok(request: Request, access_token: str) -> bool:
    """Does the request carry the access token (bearer header) or the session cookie derived from it?"""
    header = request.headers.get("authorization") or ""
    if header[:7].lower() == "bearer ":
        return hmac.compare_digest(header[7:].strip().encode(), access_token.encode())
    cookie = request.cookies.get(_cookie_name(access_token))
    return bool(cookie) and hmac.compare_digest(cookie.encode(), _session_value(access_token).encode())


class Guard:
    """ASGI middleware: Host allow-list, same-origin check for state changes, access token on /api/."""

    def __init__(self, app, *, access_token: str, hosts: set[str] | None) -> None:
        self.app = app
        self.access_token = access_token
        self.hosts = hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        response = self.check(request)
        if response is None:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)

    def check(self, request: Request) -> Response | None:
        host = (request.headers.get("host") or "").lower()
        hostname = urlsplit(f"//{host}").hostname or ""
        if self.hosts is not None and hostname not in self.hosts:
            return _error(403, f"host: {hostname!r} is not a name of this server (DNS rebinding protection)")
        if request.method in _UNSAFE_METHODS:
            origin = request.headers.get("origin")
            if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host):
                return _error(403, "origin: cross-site requests are refused")
        path = request.url.path
        if path == "/" and "token" in request.query_params:
            return self.sign_in(request.query_params["token"])
        if _token_ok(request, self.access_token):
            return self.size_check(request)
        if path == "/":
            return HTMLResponse(_login_page(), status_code=401, headers={"Cache-Control": "no-store"})
        if path.startswith("/static/") or path == "/openapi.json":
            return self.size_check(request)  # the same for every install: no state, no secret
        # Anything else needs the token (deny by default), and its body is never read without it.
        return _error(401, "access token required: send 'Authorization: Bearer <token>', or open the address "
                           "`deepsynth serve` printed (…/?token=…) in the browser")

    def sign_in(self, token: str) -> Response:
        """``/?token=…``: set the session cookie and drop the token from the address bar."""
        if not hmac.compare_digest(token.encode(), self.access_token.encode()):
            return HTMLResponse(_login_page(), status_code=401, headers={"Cache-Control": "no-store"})
        response = RedirectResponse("/", status_code=303, headers={"Referrer-Policy": "no-referrer",
                                                                   "Cache-Control": "no-store"})
        set_session_cookie(response, self.access_token)
        return response

    @staticmethod
    def size_check(request: Request) -> Response | None:
        length = request.headers.get("content-length", "")
        if request.url.path != "/api/datasets" and length.isdigit() and int(length) > MAX_JSON_BODY:
            return _error(413, f"body: larger than {MAX_JSON_BODY // 1024} KB")
        return None


