"""The one server-start helper, for the bench and the tests: ``convscope serve`` on 127.0.0.1.

:class:`ServerProcess` starts the server as a subprocess (its own data folder, its log in a
file: a full pipe would block it), waits for ``/readyz``, reads its memory, and stops it
(SIGTERM, then SIGKILL) or kills it (``kill -9``). :func:`running_server` wraps one in a
temporary data folder and always stops it. Load and failure tests never leave the machine.
"""

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
from pathlib import Path

import httpx

HOST = "127.0.0.1"
SERVE = ["serve", "--host", HOST]  # the Dockerfile's and compose's command, on loopback
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``convscope serve --host 127.0.0.1`` with ``env`` on top of this process's environment.

    ``clean_env`` drops this process's own ``CONVSCOPE_*`` variables first, so a test's
    server runs on exactly the settings it names.
    """

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        clean_env: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        base = {
            k: v for k, v in os.environ.items() if not (clean_env and k.startswith("CONVSCOPE_"))
        }
        full_env = {**base, "CONVSCOPE_DATA_DIR": str(data_dir), **(env or {})}
        self.log_path = log
        self._log = log.open("ab")
        self.started = time.perf_counter()
        self.start_seconds = float("nan")  # process start -> first /readyz 200
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convscope.cli", *SERVE, "--port", str(self.port)],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 120) -> ServerProcess:
        deadline = self.started + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}:\n{self._tail()}"
                    )
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        self.start_seconds = time.perf_counter() - self.started
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        raise TimeoutError(f"server at {self.url} not ready in {timeout}s:\n{self._tail()}")

    def memory(self) -> dict[str, int]:
        """Resident memory now (``VmRSS``) and its peak (``VmHWM``), in bytes."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
        return out

    def kill(self) -> None:
        """``kill -9``: no cleanup, no flush, nothing."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM (a graceful shutdown), then SIGKILL after ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return int(self.proc.returncode)

    def _tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@contextmanager
def running_server(
    env: dict[str, str] | None = None, timeout: float = 120.0
) -> Iterator[ServerProcess]:
    """A fresh server with its own data folder; stopped on exit, whatever happens."""
    with tempfile.TemporaryDirectory(prefix="convscope-bench-") as tmp:
        defaults = {"CONVSCOPE_LOG_LEVEL": "warning"}
        server = ServerProcess(Path(tmp), Path(tmp) / "server.log", {**defaults, **(env or {})})
        try:
            yield server.wait_ready(timeout)
        finally:
            server.stop(timeout=15)
