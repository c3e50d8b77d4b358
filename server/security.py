"""ASGI middleware: bearer token, same-origin and Host checks, and a request body size limit.

Token (when configured): accepted as ``Authorization: Bearer T``, as ``?token=T`` (browsers cannot set headers
on the page load or the websocket) or as the ``ipgraph_token`` cookie. A request that brings a valid ``?token=``
gets the cookie set (HttpOnly, SameSite=Strict), so the editor's own fetches and its websocket work after the
first page load. Every route and the websocket are covered; nothing is exempt.

Cross-site requests are refused: a request whose ``Origin`` is not the same host:port as ``Host`` gets 403 (a
web page on another site must not be able to queue jobs or read files from a local server). When the server is
bound to a loopback address, the ``Host`` header must name a loopback host too (DNS-rebinding protection).
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from fastapi import HTTPException

COOKIE = "ipgraph_token"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _host_only(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BodyTooLarge(HTTPException):
    """Raised while reading a body that grew past the limit; answered as 413 with a JSON reason."""


class SecurityMiddleware:
    def __init__(self, app, token: str | None = None, loopback_only_hosts: bool = True,
                 max_body_bytes: int = 64 * 1024 * 1024) -> None:
        self.app = app
        self.token = token or None
        self.loopback_only_hosts = loopback_only_hosts
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        host = headers.get("host", "")
        if self.loopback_only_hosts and host and _host_only(host) not in LOOPBACK_HOSTS:
            return await self._deny(scope, receive, send, 403, "Host header is not a loopback name")
        origin = headers.get("origin")
        if origin and origin != "null":
            o = urlsplit(origin)
            if o.netloc.lower() != host.lower():
                return await self._deny(scope, receive, send, 403, "cross-origin request refused")
        elif origin == "null" and scope["type"] == "websocket":
            return await self._deny(scope, receive, send, 403, "cross-origin request refused")
        set_cookie = False
        if self.token:
            supplied = []
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                supplied.append(("header", auth[7:].strip()))
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            for value in query.get("token", []):
                supplied.append(("query", value))
            if "cookie" in headers:
                jar = SimpleCookie()
                try:
                    jar.load(headers["cookie"])
                except Exception:
                    jar = SimpleCookie()
                if COOKIE in jar:
                    supplied.append(("cookie", jar[COOKIE].value))
            good = [how for how, value in supplied if hmac.compare_digest(value.encode(), self.token.encode())]
            if not good:
                return await self._deny(scope, receive, send, 401, "a valid token is required")
            set_cookie = "query" in good and "cookie" not in good and scope["type"] == "http"

        if scope["type"] == "http":
            length = headers.get("content-length")
            if length is not None:
                try:
                    if int(length) > self.max_body_bytes:
                        return await self._deny(scope, receive, send, 413, "request body too large")
                except ValueError:
                    return await self._deny(scope, receive, send, 400, "bad Content-Length")
            receive = self._limited(receive)
            if set_cookie:
                send = self._with_cookie(send, scope)
        return await self.app(scope, receive, send)

    def _limited(self, receive):
        seen = 0
        limit = self.max_body_bytes

        async def wrapped():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a chunked body has no Content-Length to refuse up front
                    raise BodyTooLarge(413, f"the request body is larger than {limit} bytes")
            return message

        return wrapped

    def _with_cookie(self, send, scope):
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict{secure}".encode("latin-1")

        async def wrapped(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"set-cookie", cookie)]
            await send(message)

        return wrapped

    async def _deny(self, scope, receive, send, status: int, message: str):
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401 if status == 401 else 4403})
            return
        body = json.dumps({"error": {"type": "forbidden" if status != 401 else "unauthorized",
                                     "message": message, "details": "", "extra_info": {}}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="ipgraph"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
