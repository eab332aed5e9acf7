"""Pure ASGI middleware: security headers, request ids, trusted hosts, body bounds.

Over 300 lines: several small pure-ASGI classes that share the error writer and the
body-reading loop; each is short.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from convscope.api.logs import REQUEST_ID

log = logging.getLogger("convscope.access")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
# /docs loads Swagger UI from a CDN and inline script; the page is ours, the assets are not.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: "
    "https://fastapi.tiangolo.com; frame-ancestors 'none'"
)


class SecurityHeaders:
    """CSP, nosniff, referrer policy and a request id on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(_header(scope, b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)  # for every log line written for this request
        csp = DOCS_CSP if scope["path"] in ("/docs", "/redoc") else CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"x-request-id", request_id.encode()),
                ]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            REQUEST_ID.reset(token)


def _request_id(given: str | None) -> str:
    """The client's X-Request-Id if it is short and plain (it goes into logs), else a new one."""
    if given and len(given) <= 64 and all(c.isalnum() or c in "-_.:" for c in given):
        return given
    return uuid.uuid4().hex[:16]


class Refusal(Exception):
    """An answer decided by middleware while the app runs (body too large, too slow,
    overloaded): raised from ``receive``; :func:`run_refusable` sends it instead of whatever
    the app answers (FastAPI turns an exception from ``receive`` into its own 400)."""

    def __init__(
        self, status: int, detail: str, code: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code
        self.headers = headers or []

    async def send(self, send: Send) -> None:
        await send_error(send, self.status, self.detail, self.code, self.headers)


async def run_refusable(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> int:
    """Run ``app``; a :class:`Refusal` raised by ``receive`` replaces the app's response
    (once, if none has started). Returns the status sent (0 if none)."""
    refused: Refusal | None = None
    status = 0

    async def guarded_receive() -> Message:
        nonlocal refused
        try:
            return await receive()
        except Refusal as exc:
            refused = refused or exc
            raise

    async def guarded_send(message: Message) -> None:
        nonlocal status
        if refused is not None:
            if not status:
                status = refused.status
                await refused.send(send)
            return
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, guarded_receive, guarded_send)
    except Refusal as exc:
        refused = refused or exc
    if refused is not None and not status:
        status = refused.status
        await refused.send(send)
    return status


CLOSE = [(b"connection", b"close")]


class BodyLimit:
    """Bounds on a request body, checked as it arrives, before the app parses it.

    413 ``payload_too_large`` over ``limit`` bytes, declared (Content-Length) or streamed
    (chunked), ``json_limit`` for JSON bodies; 422 ``json_too_deep`` for JSON nested deeper
    than ``json_depth``; 408 ``body_timeout`` when the body takes longer than ``read_timeout``
    seconds in all or pauses longer than ``idle_timeout``. ``overrides`` maps
    ``(method, path)`` to a different limit (model uploads are bigger).
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        overrides: dict[tuple[str, str], int] | None = None,
        *,
        json_limit: int | None = None,
        json_depth: int = 32,
        read_timeout: float = 120.0,
        idle_timeout: float = 15.0,
    ) -> None:
        self.app = app
        self.limit = limit
        self.overrides = overrides or {}
        self.json_limit = json_limit
        self.json_depth = json_depth
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout

    def _limit_for(self, method: str, path: str) -> int:
        """The override for ``(method, path)``; a ``*`` in an override's path is one segment."""
        found = self.overrides.get((method, path))
        if found is not None:
            return found
        for (m, pattern), value in self.overrides.items():
            if m == method and "*" in pattern:
                want, have = pattern.split("/"), path.split("/")
                if len(want) == len(have) and all(
                    w in ("*", h) for w, h in zip(want, have, strict=True)
                ):
                    return value
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["method"], scope["path"].rstrip("/"))
        is_json = (_header(scope, b"content-type") or "").lower().startswith("application/json")
        setting = "CONVSCOPE_MAX_UPLOAD_BYTES, or CONVSCOPE_MAX_MODEL_UPLOAD_BYTES for model "
        setting += "uploads, plus form overhead"
        if is_json and self.json_limit is not None and self.json_limit < limit:
            limit, setting = self.json_limit, "CONVSCOPE_MAX_JSON_BODY_BYTES"
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit, setting).send(send)
            return
        if not has_body(scope):
            await self.app(scope, receive, send)
            return
        received = 0
        done = False
        deadline = time.monotonic() + self.read_timeout
        chunks: list[bytes] = []

        async def limited_receive() -> Message:
            nonlocal received, done
            if done:
                return await receive()  # the body is in: a disconnect may take any time
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), min(self.idle_timeout, max(left, 0)))
            except TimeoutError:
                raise _body_timeout(self.read_timeout, self.idle_timeout, left) from None
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                if received > limit:
                    raise _too_large(limit, setting)
                if is_json:
                    chunks.append(body)
                if not message.get("more_body", False):
                    done = True
                    if is_json and json_depth(b"".join(chunks)) > self.json_depth:
                        raise Refusal(
                            422,
                            f"JSON nested deeper than {self.json_depth} levels "
                            "(CONVSCOPE_MAX_JSON_DEPTH)",
                            "json_too_deep",
                        )
            else:
                done = True
            return message

        await run_refusable(self.app, scope, limited_receive, send)


def has_body(scope: Scope) -> bool:
    """Whether the request declares a body (a positive Content-Length, or chunked)."""
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return _header(scope, b"transfer-encoding") is not None


def json_depth(data: bytes | str) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON text, outside strings; no parsing (the
    parser itself would recurse on a hostile document)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _body_timeout(total: float, idle: float, left: float) -> Refusal:
    which = (
        f"the body did not arrive within {total:g} s (CONVSCOPE_BODY_READ_TIMEOUT_SECONDS)"
        if left <= idle
        else f"no body data for {idle:g} s (CONVSCOPE_BODY_IDLE_TIMEOUT_SECONDS)"
    )
    return Refusal(408, f"request body too slow: {which}", "body_timeout", CLOSE)


async def send_error(
    send: Send, status: int, detail: str, code: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """Answer ``{"detail", "code"}`` from ASGI middleware, before any route runs."""
    import orjson

    body = orjson.dumps({"detail": detail, "code": code})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int, setting: str) -> Refusal:
    return Refusal(
        413,
        f"request body larger than the limit of {limit} bytes ({setting})",
        "payload_too_large",
        CLOSE,
    )


def _header(scope: Scope, name: bytes) -> Any:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "::1", "testserver"]


def default_trusted_hosts(bind_host: str | None) -> list[str]:
    """Loopback names when bound to a loopback address (a page on another site reached
    through DNS rebinding sends its own host name), any host otherwise."""
    if bind_host is not None and (
        bind_host in ("localhost", "::1") or bind_host.startswith("127.")
    ):
        return LOOPBACK_HOSTS + ([bind_host] if bind_host not in LOOPBACK_HOSTS else [])
    return ["*"]


class TrustedHosts:
    """421 ``untrusted_host`` unless the Host header (port aside) is one of ``hosts``
    (``*.example.org`` matches sub-domains; ``*`` matches anything). Like Starlette's
    ``TrustedHostMiddleware``, with a JSON error that names the setting."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app = app
        self.any = "*" in hosts
        self.exact = {h.lower() for h in hosts if not h.startswith("*")}
        self.suffixes = tuple(h[1:].lower() for h in hosts if h.startswith("*."))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = host_name(_header(scope, b"host") or "")
        if host in self.exact or (self.suffixes and host.endswith(self.suffixes)):
            await self.app(scope, receive, send)
            return
        await send_error(
            send,
            421,
            f"host {host[:100]!r} is not served here; expected one of "
            f"{', '.join(sorted(self.exact) + ['*' + s for s in self.suffixes])} "
            "(CONVSCOPE_TRUSTED_HOSTS)",
            "untrusted_host",
            CLOSE,
        )


def host_name(header: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:80`` -> ``::1``; lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header
