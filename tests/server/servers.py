"""Real server processes for the server tests: ``convscope serve`` and nginx, on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    """``convscope serve`` as a subprocess with ``env`` settings; ``stop``/``kill`` it."""

    def __init__(self, data_dir: Path, log: Path, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
        env |= {"CONVSCOPE_DATA_DIR": str(data_dir), "CONVSCOPE_TORCH_THREADS": "1"}
        env.setdefault("MALLOC_ARENA_MAX", "2")  # as in the Dockerfile advice: flat RSS
        env |= {f"CONVSCOPE_{k.upper()}": str(v) for k, v in settings.items()}
        exe = shutil.which("convscope") or str(Path(sys.executable).with_name("convscope"))
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [exe, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def wait_ready(self, timeout: float = 120) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """``kill -9``: no cleanup, no flush, nothing."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return int(self.proc.returncode)


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
