"""Checks on every request, before any route runs (a plain ASGI middleware).

- token: when the server has one (always, off loopback), every request carries it as
  `Authorization: Bearer TOKEN`, `?token=TOKEN` or the cookie the page gets when opened with
  `?token=`; compared in constant time.
- host: a loopback server without a token answers only Host headers naming loopback, so a web
  page elsewhere cannot reach it through DNS rebinding.
- origin: a request a browser sends from another site (its Origin differs from the Host) is
  refused, so a web page cannot post uploads or prompts to a server on this machine.
- size: a request body must announce its length (Content-Length) and stay within the limit.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from segmote.serve.config import is_loopback

COOKIE = "segmote_token"
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


async def send_json(send: Callable, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """Wraps the app; answers refused requests itself with a JSON error."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.token is None and not is_loopback(_host_name(headers.get("host", ""))):
            return await send_json(send, 403, {"error": "this server answers only requests "
                                               "addressed to localhost / 127.0.0.1"})
        origin = headers.get("origin")
        if origin and urlsplit(origin).netloc != headers.get("host"):
            return await send_json(send, 403, {"error": "cross-site request refused"})
        from_query = False
        if self.token is not None:
            given, from_query = self._given_token(scope, headers)
            if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
                return await send_json(send, 401, {"error": "missing or wrong token (open the "
                                                   "URL segmote serve printed)"})
        refusal = self._body_refusal(scope, headers)
        if refusal is not None:
            return await send_json(send, *refusal)
        if not from_query:
            return await self.app(scope, receive, send)

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = [*message.get("headers", []),
                                      (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _given_token(self, scope: Scope, headers: dict[str, str]) -> tuple[str | None, bool]:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if query:
            return query[0], True
        cookie = SimpleCookie(headers.get("cookie", "")).get(COOKIE)
        return (cookie.value if cookie else None), False

    def _body_refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, dict] | None:
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return None
        length = headers.get("content-length")
        if length is None:
            if headers.get("transfer-encoding"):
                return 411, {"error": "send the request body with a Content-Length"}
            return None
        if not length.isdigit():
            return 400, {"error": "bad Content-Length"}
        if int(length) > self.max_body:
            return 413, {"error": f"request body of {int(length) / 2**20:.1f} MB exceeds the "
                                  f"server's upload limit of {self.max_body / 2**20:g} MB"}
        return None
