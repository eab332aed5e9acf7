"""A real local Ray cluster for the tests: ``ray start`` on 127.0.0.1, stopped by pid.

Every node is started with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (without it Ray was seen
binding to the machine's non-loopback address), no dashboard, no usage stats, a capped object
store and few CPUs. ``ray start`` runs in a new session, so every process it leaves behind
(GCS, raylet, agents, workers) is in that process group: :meth:`LocalRay.pids` finds them
(and their descendants), :meth:`LocalRay.check_loopback` fails unless every socket they listen
on is bound to 127.0.0.1, and :meth:`LocalRay.stop` ends exactly those processes. Never
``ray stop``: that would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

MB = 1024**2
REPO = Path(__file__).resolve().parents[3]
LOOPBACK = frozenset({"127.0.0.1", "::ffff:127.0.0.1", "::1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env() -> dict[str, str]:
    """The environment for anything that starts or joins the test cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVSCOPE_", "RAY_"))}
    env |= {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
        "MALLOC_ARENA_MAX": "2",
    }
    return env


_JOIN = """
import sys
from ray._private import ray_constants, services
ray_constants.ENABLE_RAY_CLUSTER = True
services.node_ip_address_from_perspective = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


def _ray_exe() -> str:
    return shutil.which("ray") or str(Path(sys.executable).with_name("ray"))


class LocalRay:
    """A head node (and optional worker nodes) on 127.0.0.1, started by this test run."""

    def __init__(self, *, cpus: float = 2, object_store_mb: int = 200) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray puts unix sockets under it (107-byte path limit).
        self.temp_dir = tempfile.mkdtemp(prefix="cs-ray-", dir="/tmp")
        self.object_store_mb = object_store_mb
        self.groups: list[int] = []  # process groups of our `ray start`s
        self.extra: list[int] = []  # other pids to watch and stop (API processes' drivers)
        self.nodes: list[str] = []
        self._start(
            "--head",
            f"--port={self.port}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--num-cpus={cpus}",
        )

    def _start(self, *args: str, cpus: float | None = None, join: bool = False) -> None:
        # A joining node: `ray start` refuses to join when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
        # and with it on, resolves 127.0.0.1 to the machine's address. So the CLI process
        # (only it) allows joining and resolves "this node" to 127.0.0.1; the raylet and
        # agents it starts keep the loopback-only environment, and check_loopback verifies.
        launcher = [sys.executable, "-c", _JOIN] if join else [_ray_exe()]
        command = [
            *launcher,
            "start",
            *args,
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--object-store-memory={self.object_store_mb * MB}",
            f"--temp-dir={self.temp_dir}",
        ]
        if cpus is not None:
            command.append(f"--num-cpus={cpus}")
        # A file, not a pipe: the daemons inherit it and would hold a pipe open forever.
        log = Path(self.temp_dir) / f"ray-start-{len(self.groups)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command,
                env=ray_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: ours to find and stop
            )
        self.groups.append(proc.pid)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            self.stop()
            raise
        if proc.returncode != 0:
            text = log.read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"ray start failed:\n{text}")

    def add_node(self, cpus: float = 1) -> None:
        """A second node on this machine joins the cluster (its own raylet)."""
        self._start(f"--address={self.address}", cpus=cpus, join=True)
        self.check_loopback()

    def pids(self) -> set[int]:
        """Every live process our ``ray start``s left, and their descendants."""
        found: set[int] = set()
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                ours = os.getpgid(proc.pid) in self.groups or any(
                    self.temp_dir in arg for arg in proc.info["cmdline"] or ()
                )  # a worker in a session of its own still names our temp dir
                if ours and proc.status() != psutil.STATUS_ZOMBIE:
                    found.add(proc.pid)
        found |= {p for p in self.extra if psutil.pid_exists(p)}
        for pid in list(found):
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(pid).children(recursive=True)
                found |= {c.pid for c in children if c.status() != psutil.STATUS_ZOMBIE}
        return found

    def listeners(self, also: tuple[int, ...] = ()) -> list[tuple[int, str, str, int]]:
        """``(pid, name, ip, port)`` of every listening TCP socket of our processes (and of
        ``also``: e.g. this test process once it is a Ray driver; checked, never stopped)."""
        out = []
        for pid in sorted(self.pids() | set(self.extra) | set(also)):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        out.append((pid, proc.name(), conn.laddr.ip, conn.laddr.port))
        return out

    def check_loopback(self, also: tuple[int, ...] = ()) -> None:
        """Stop everything and fail unless every listener is on the loopback interface."""
        listening = self.listeners(also)
        wide = [entry for entry in listening if entry[2] not in LOOPBACK]
        if wide or not listening:
            self.stop()
            raise RuntimeError(
                f"Ray listens beyond 127.0.0.1 (stopped the cluster): {wide or 'no listeners'}"
            )

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM every process we started, SIGKILL what is left after ``timeout`` s."""
        for _ in range(3):  # a raylet may spawn a worker while we stop: look again
            pids = self.pids()
            if not pids:
                break
            procs = []
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(pid)
                    proc.send_signal(signal.SIGTERM)
                    procs.append(proc)
            _, alive = psutil.wait_procs(procs, timeout=timeout)
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            psutil.wait_procs(alive, timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_for(predicate, timeout: float, what: str, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
