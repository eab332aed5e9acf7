"""Start a convscope server on 127.0.0.1 in a subprocess, watch its memory, always stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"  # load tests never leave the machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    start_seconds: float  # process start -> first /readyz 200

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory(self) -> dict[str, int]:
        """Resident memory now (``VmRSS``) and its peak (``VmHWM``), in bytes."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
        return out


@contextmanager
def running_server(env: dict[str, str] | None = None, timeout: float = 120.0) -> Iterator[Server]:
    """A fresh server with its own data folder; killed on exit, whatever happens."""
    with tempfile.TemporaryDirectory(prefix="convscope-bench-") as tmp:
        port = free_port()
        full_env = {
            **os.environ,
            "CONVSCOPE_DATA_DIR": tmp,
            "CONVSCOPE_LOG_LEVEL": "warning",
            **(env or {}),
        }
        command = [sys.executable, "-m", "convscope.cli", "serve", "--host", HOST]
        log = Path(tmp) / "server.log"  # a file, not a pipe: a full pipe would block it
        with log.open("wb") as stderr:
            start = time.perf_counter()
            process = subprocess.Popen(
                [*command, "--port", str(port)],
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            try:
                url = f"http://{HOST}:{port}"
                ready = _wait_ready(process, url, log, start + timeout)
                yield Server(process, url, Path(tmp), ready - start)
            finally:
                _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, deadline: float) -> float:
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                err = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server exited with {process.returncode}: {err}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return time.perf_counter()
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise TimeoutError(f"server at {url} not ready in time")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
