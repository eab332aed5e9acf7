"""Real server processes for the server tests: ``convscope serve`` (through the one helper in
``bench/server.py``) and nginx, on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

from bench.server import REPO, ServerProcess, free_port

__all__ = ["REPO", "Server", "free_port", "rss_kib", "start_all"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server(ServerProcess):
    """A server on exactly the settings given as keywords (``max_queue=2`` ->
    ``CONVSCOPE_MAX_QUEUE=2``), one torch thread and two malloc arenas (flat RSS)."""

    def __init__(self, data_dir: Path, log: Path, **settings: object) -> None:
        env = {"CONVSCOPE_TORCH_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
        env |= {f"CONVSCOPE_{k.upper()}": str(v) for k, v in settings.items()}
        super().__init__(data_dir, log, env, clean_env=True)


def start_all(servers: list[Server]) -> list[Server]:
    """Wait for servers started together (they load their models in parallel)."""
    try:
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the body (Content-Length bodies only) of one response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body
