"""Slow header senders (issue 10) over raw sockets against `convscope serve`: the header
deadline (408 `header_timeout`), the pending-connection bounds per client and overall, and
kept-alive connections that idle between complete requests without a false timeout.

Clients take their own loopback source addresses (127.0.0.2, ...: every 127/8 address reaches
the server on Linux), since 127.0.0.1 is a trusted proxy address for uvicorn and proxies have
no per-client bound."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server.servers import Server, read_response, start_all

pytestmark = pytest.mark.slow
TIMEOUT = 3.0  # CONVSCOPE_HEADER_TIMEOUT_SECONDS on the test server
GRACE = 1.0  # protocol.GRACE_SECONDS: a pending connection younger than this is never evicted
LIMITS = {
    "header_timeout_seconds": TIMEOUT,
    "max_pending_connections": 6,
    "max_pending_connections_per_client": 3,
    "models_poll_seconds": 0,
}
Response = tuple[int, dict[str, str], bytes]
Slow = tuple[socket.socket, Response | None]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("slow-headers")
    proc = start_all([Server(data, data / "serve.log", **LIMITS)])[0]
    yield proc
    proc.kill()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _connect(server: Server, source: str, opened: list[socket.socket]) -> socket.socket:
    sock = socket.socket()
    opened.append(sock)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    return sock


def _head(server: Server) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode()


def _refusal(sock: socket.socket, wait: float) -> Response | None:
    """The answer the server sends before any request, if one comes within ``wait`` s."""
    sock.settimeout(wait)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        return None
    finally:
        sock.settimeout(10)
    return read_response(sock) if first else None


def _slow(server: Server, sources: list[str], opened: list[socket.socket]) -> list[Slow]:
    """Connections from ``sources`` opened at once, in order; each sends an unfinished header
    block, or was refused at once (its answer)."""
    socks = [_connect(server, source, opened) for source in sources]
    time.sleep(0.3)  # the server accepts them (and refuses some) meanwhile
    slow = []
    for sock in socks:
        refused = _refusal(sock, 0.05)
        if refused is None:
            sock.sendall(_head(server))
        slow.append((sock, refused))
    return slow


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _code(response: Response) -> tuple[int, str]:
    return response[0], str(json.loads(response[2])["code"])


def _get(server: Server, source: str, path: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=server.url, transport=transport, timeout=30) as client:
        return client.get(path)


def test_trickled_headers_get_408_at_the_deadline(
    server: Server, sockets: list[socket.socket]
) -> None:
    """One byte each 0.5 s never extends the deadline: 408 `header_timeout`, then closed."""
    sock = _connect(server, "127.0.0.2", sockets)
    started = time.monotonic()
    sock.sendall(_head(server))
    answer = None
    while answer is None and time.monotonic() - started < TIMEOUT + 5:
        sock.sendall(b"X")
        answer = _refusal(sock, 0.5)
    elapsed = time.monotonic() - started
    assert answer is not None, "no answer to a slow header sender"
    assert _code(answer) == (408, "header_timeout")
    assert answer[1]["connection"] == "close" and answer[1]["content-type"] == "application/json"
    assert TIMEOUT - 0.3 <= elapsed <= TIMEOUT + 1.5, elapsed
    assert _closed(sock)


def test_a_silent_connection_gets_408_too(server: Server, sockets: list[socket.socket]) -> None:
    sock = _connect(server, "127.0.0.2", sockets)
    started = time.monotonic()
    answer = _refusal(sock, TIMEOUT + 3)
    assert answer is not None and _code(answer) == (408, "header_timeout")
    assert TIMEOUT - 0.3 <= time.monotonic() - started <= TIMEOUT + 1.5
    assert _closed(sock)


def test_pending_connections_are_bounded_per_client(
    server: Server, sockets: list[socket.socket]
) -> None:
    """3 slow senders per address: a 4th and 5th at once are refused (429); later, a normal
    client from the same address closes the oldest slow sender and is served."""
    opened = time.monotonic()
    slow = _slow(server, ["127.0.0.3"] * 5, sockets)
    assert [refused is None for _, refused in slow] == [True, True, True, False, False]
    for _, refused in slow[3:]:
        assert refused is not None and _code(refused) == (429, "too_many_connections")
        assert refused[1]["retry-after"] == "5"
    for sock, _ in slow[3:]:
        assert _closed(sock)
    # Another address is not affected, at once.
    assert _get(server, "127.0.0.4", "/healthz").status_code == 200
    time.sleep(opened + GRACE + 0.2 - time.monotonic())  # old enough now to make room
    assert _get(server, "127.0.0.3", "/healthz").status_code == 200
    evicted = _refusal(slow[0][0], 1)
    assert evicted is not None and _code(evicted) == (429, "too_many_connections")
    assert _closed(slow[0][0])
    models = _get(server, "127.0.0.3", "/api/models")
    assert models.status_code == 200 and models.json(), models.text
    for sock, _ in slow[1:3]:  # still waiting: nobody else made room with them
        assert _refusal(sock, 0.05) is None


def test_pending_connections_are_bounded_overall(
    server: Server, sockets: list[socket.socket]
) -> None:
    """6 slow senders overall (3 addresses x 2): a newcomer at once is refused (503); after
    the grace period a normal client closes the oldest one and is served."""
    opened = time.monotonic()
    *slow, (sock, refused) = _slow(
        server, [f"127.0.0.{5 + i % 3}" for i in range(6)] + ["127.0.0.8"], sockets
    )
    assert all(refused is None for _, refused in slow)
    assert refused is not None and _code(refused) == (503, "overloaded")
    assert refused[1]["retry-after"] == "5" and _closed(sock)
    time.sleep(opened + GRACE + 0.2 - time.monotonic())
    assert _get(server, "127.0.0.8", "/healthz").status_code == 200
    evicted = _refusal(slow[0][0], 1)
    assert evicted is not None and _code(evicted) == (503, "overloaded")
    assert _get(server, "127.0.0.1", "/api/models").status_code == 200


def test_keep_alive_idles_between_requests_without_a_header_timeout(
    server: Server, sockets: list[socket.socket]
) -> None:
    """Idle longer than the header deadline (less than uvicorn's 5 s keep-alive) between two
    complete requests: both 200. The deadline starts again with the next request's first byte."""
    sock = _connect(server, "127.0.0.9", sockets)
    request = _head(server) + b"\r\n"
    sock.sendall(request)
    assert read_response(sock)[0] == 200
    time.sleep(TIMEOUT + 0.7)
    sock.sendall(request[:10])  # within the deadline, in two parts
    time.sleep(1)
    sock.sendall(request[10:])
    status, headers, _ = read_response(sock)
    assert status == 200 and headers.get("connection") != "close"
    started = time.monotonic()
    sock.sendall(_head(server))  # a third request that never finishes its headers
    answer = _refusal(sock, TIMEOUT + 3)
    assert answer is not None and _code(answer) == (408, "header_timeout")
    assert TIMEOUT - 0.3 <= time.monotonic() - started <= TIMEOUT + 1.5
    with contextlib.suppress(OSError):
        assert _closed(sock)
