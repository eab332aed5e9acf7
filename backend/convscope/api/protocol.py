"""Slow header senders (issue 10): a header-read timeout and a bound on connections whose
request headers have not arrived yet, enforced in uvicorn's HTTP protocol.

uvicorn has no header timeout (``timeout_keep_alive`` only runs between requests), so a client
sending its request line one byte a second holds a connection, a file descriptor and a parser
forever, before any ASGI middleware can see it. :func:`protocol_class` subclasses the httptools
protocol (a dependency; uvicorn's ``auto`` picks it too) for ``uvicorn.run(http=...)``:

* a connection is *pending* from ``connection_made`` (and on keep-alive from the first byte of
  its next request) until its header block is complete; the timer is a deadline for the whole
  block, never extended by trickled bytes; on expiry: 408 ``header_timeout`` and close;
* pending connections are bounded per client address and overall. A newcomer over a bound
  closes the one that has waited longest, if that one has waited at least ``GRACE_SECONDS``
  (a slow sender); else the newcomer itself is refused. A trusted proxy's address
  (uvicorn's ``forwarded_allow_ips``) is not a client: only the overall bound applies to it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from convscope.api.middleware import CSP
from convscope.config import Settings

log = logging.getLogger(__name__)

GRACE_SECONDS = 1.0  # a pending connection younger than this is never closed to make room
RETRY_AFTER = b"5"


class PendingHeaders:
    """Connections still sending their headers, oldest first, overall and per client."""

    def __init__(self, timeout: float, total: int, per_client: int) -> None:
        self.timeout = timeout
        self.total = total
        self.per_client = per_client
        self._all: dict[HeaderTimeoutProtocol, float] = {}  # insertion order: oldest first
        self._clients: dict[str, dict[HeaderTimeoutProtocol, float]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def start(
        self, conn: HeaderTimeoutProtocol, client: str | None, now: float
    ) -> list[tuple[HeaderTimeoutProtocol, int]]:
        """Count ``conn`` as pending (``client`` None: a proxy, no per-client bound). Returns
        the connections to refuse with their status (429: per client, 503: overall), which may
        be ``conn`` itself, then not counted."""
        refused: list[tuple[HeaderTimeoutProtocol, int]] = []
        mine = self._clients.get(client, {}) if client is not None else {}
        for group, bound, status in ((mine, self.per_client, 429), (self._all, self.total, 503)):
            if len(group) < bound:
                continue
            oldest, since = next(iter(group.items()))
            if now - since < GRACE_SECONDS:
                return [*refused, (conn, status)]
            self.finish(oldest)
            refused.append((oldest, status))
        self._all[conn] = now
        if client is not None:
            self._clients.setdefault(client, {})[conn] = now
        return refused

    def finish(self, conn: HeaderTimeoutProtocol) -> None:
        if self._all.pop(conn, None) is None:
            return
        client = conn.pending_client
        group = self._clients.get(client, {}) if client is not None else {}
        group.pop(conn, None)
        if client is not None and not group:
            self._clients.pop(client, None)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline and the pending bound."""

    pending: ClassVar[PendingHeaders]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        proxies = self.config.forwarded_allow_ips if self.config.proxy_headers else ""
        self.is_proxy = _trusted(proxies if isinstance(proxies, str) else tuple(proxies))
        self.pending_client: str | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begin_headers(first=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_headers()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None and not self.transport.is_closing():
            self._begin_headers(first=False)  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._end_headers()
        super().on_headers_complete()

    def _begin_headers(self, *, first: bool) -> None:
        host = self.client[0] if self.client else ""
        self.pending_client = None if self.is_proxy(host) else host
        now = self.loop.time()
        for conn, status in self.pending.start(self, self.pending_client, now):
            if conn is self and not first:
                # Mid-parse on a kept-alive connection: no early answer, the deadline decides.
                self.pending.finish(self)
                continue
            conn.refuse(status)
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.pending.timeout, self._expired)

    def _end_headers(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.pending.finish(self)

    def _expired(self) -> None:
        self._deadline = None
        self.pending.finish(self)
        detail = f"the request line and headers must arrive within {self.pending.timeout:g} s"
        log.debug("header timeout from %s", self.pending_client or "a proxy")
        self._answer(408, "header_timeout", detail, [])

    def refuse(self, status: int) -> None:
        """Answer a connection closed by a pending bound (see :class:`PendingHeaders`)."""
        self._end_headers()
        if status == 429:
            code = "too_many_connections"
            detail = (
                f"more than {self.pending.per_client} connections from your address are still "
                "sending their request headers; finish or close one"
            )
        else:
            code = "overloaded"
            detail = f"more than {self.pending.total} connections are still sending headers"
        log.debug("%s: %s", code, self.pending_client or "a proxy")
        self._answer(status, code, detail, [(b"retry-after", RETRY_AFTER)])

    def _answer(
        self, status: int, code: str, detail: str, extra: list[tuple[bytes, bytes]]
    ) -> None:
        """A JSON error and close, or only close while a response is under way (a pipelined
        request started while the previous one is still answered)."""
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            body = orjson.dumps({"detail": detail, "code": code})
            headers = [
                *self.server_state.default_headers,
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"content-security-policy", CSP.encode()),
                (b"x-content-type-options", b"nosniff"),
                *extra,
            ]
            head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            self.transport.write(STATUS_LINE[status] + head + b"\r\n" + body)
        self.transport.close()


@functools.cache
def _trusted(allowed: tuple[str, ...] | str) -> Callable[[str], bool]:
    """Whether an address is one of uvicorn's ``forwarded_allow_ips`` (addresses, networks, *)."""
    entries = [e.strip() for e in (allowed.split(",") if isinstance(allowed, str) else allowed)]
    if "*" in entries:
        return lambda _host: True
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a unix socket name: such peers have no address to match

    def trusted(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in networks)

    return trusted


def protocol_class(settings: Settings) -> type[HeaderTimeoutProtocol]:
    """The protocol for ``uvicorn.run(http=...)``: its own pending table per server."""
    pending = PendingHeaders(
        settings.header_timeout_seconds,
        settings.max_pending_connections,
        settings.max_pending_connections_per_client,
    )
    return type("ConvscopeHttpProtocol", (HeaderTimeoutProtocol,), {"pending": pending})
