"""``python -m bench --cluster``: what Ray adds and what it buys, on this machine.

* the default process: start-up time and idle memory, and that it maps no Ray library;
* Serve's added latency per request: the same GETs through a plain ``convscope serve`` and
  through ``convscope serve --cluster`` (one Serve replica), sequential, p50 and p99;
* indexing throughput (images/s) on one process (``Convscope.index_now``), on Ray Data with
  one actor, and with two nodes (one actor each), each against the floor (a plain decode,
  preprocess and batched forward loop in this process, no hooks).

Everything on 127.0.0.1: a local Ray cluster started and stopped by pid
(``tests/services/cluster/localray.py``, the tests' own harness, which checks every listener).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.collections import BATCH, MEMORY_LAYERS, MODEL, _floor, make_images
from bench.server import free_port, running_server
from bench.table import Row, percentile, render

log = logging.getLogger("bench.cluster")
MIB = 1024**2


def _ray_mapped(pid: int) -> bool:
    return "_raylet" in Path(f"/proc/{pid}/maps").read_text()


def _latencies(url: str, paths: list[str], rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {p: [] for p in paths}
    with httpx.Client(base_url=url, timeout=60) as client:
        for p in paths:
            client.get(p).raise_for_status()  # warm: model, caches
        for _ in range(rounds):
            for p in paths:
                start = time.perf_counter()
                client.get(p).raise_for_status()
                out[p].append((time.perf_counter() - start) * 1000)
    return out


def _paths(url: str) -> dict[str, str]:
    cat = next(
        i["id"] for i in httpx.get(f"{url}/api/images", timeout=30).json() if i["name"] == "cat"
    )
    m = f"/api/models/{MODEL}"
    return {
        "layers (cached JSON)": f"{m}/layers",
        "predictions (forward pass)": f"{m}/images/{cat}/predictions?top=5",
    }


def _serve(cluster, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:  # type: ignore[no-untyped-def]
    from tests.services.cluster.localray import ray_env, wait_for

    port = free_port()
    exe = shutil.which("convscope") or str(Path(sys.executable).with_name("convscope"))
    env = ray_env() | {"CONVSCOPE_DATA_DIR": str(data_dir), "CONVSCOPE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [exe, "serve", "--cluster", cluster.address, "--replicas", "1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cluster.extra.append(proc.pid)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, 240, "the Serve replica", every=0.5)
    cluster.check_loopback()
    return proc, url


def serve_rows(rounds: int) -> list[Row]:
    from tests.services.cluster.localray import LocalRay

    rows: list[Row] = []
    with running_server({"CONVSCOPE_TORCH_THREADS": "1"}) as plain:
        idle = plain.memory()["VmRSS"]
        rows += [
            Row("default process: start to /readyz", plain.start_seconds, "s", samples=1),
            Row("default process: idle RSS", idle / MIB, "MiB", samples=1),
            Row(
                "default process: Ray libraries mapped",
                float(_ray_mapped(plain.pid)),
                "",
                note="0 = no Ray import (CONVSCOPE_RAY_ADDRESS unset)",
            ),
        ]
        paths = _paths(plain.url)
        base = _latencies(plain.url, list(paths.values()), rounds)
    cluster = LocalRay(cpus=2, object_store_mb=200)
    try:
        cluster.check_loopback()
        with tempfile.TemporaryDirectory(prefix="convscope-bench-") as tmp:
            proc, url = _serve(cluster, Path(tmp))
            try:
                served = _latencies(url, list(_paths(url).values()), rounds)
            finally:
                proc.terminate()
                proc.wait(60)
    finally:
        cluster.stop()
    for name, path in paths.items():  # the same URLs: the sample ids are content hashes
        for q in (50, 99):
            plain_ms = percentile(base[path], q)
            serve_ms = percentile(served[path], q)
            rows.append(
                Row(
                    f"Serve p{q}: {name}",
                    serve_ms,
                    "ms",
                    plain_ms,
                    "plain process",
                    samples=rounds,
                    note=f"added {serve_ms - plain_ms:+.1f} ms per request (1 replica, "
                    "sequential; torch 1 thread in both)",
                )
            )
    return rows


def index_rows(count: int) -> list[Row]:
    from tests.services.cluster.localray import LocalRay

    from convscope.config import Settings
    from convscope.services.cluster.indexing import RayIndexOptions, index_on_ray
    from convscope.services.facade import Convscope

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="convscope-bench-") as tmp:
        scratch = Path(tmp)
        paths = make_images(scratch / "images", count)
        settings = Settings(data_dir=scratch / "data", builtin_collection=False)
        service = Convscope(settings)
        model = service.load_default()
        _floor(model, paths[:BATCH])
        floor = count / _floor(model, paths)
        made = service.import_folder("bench", scratch / "images")
        start = time.perf_counter()
        service.index_now(MODEL, str(made["id"]), MEMORY_LAYERS)
        one = count / (time.perf_counter() - start)
        ids = service.collections.reader(model, str(made["id"])).images
        shapes = {n: tuple(model.layer(n).output_shape or ()) for n in MEMORY_LAYERS}
        rows.append(
            Row(f"index {count} images, one process", one, "img/s", floor, "floor", samples=1)
        )
        runs = [
            ("Ray Data, 1 actor", 2, False, RayIndexOptions(cpus=1.0), 0),
            (
                "Ray Data, 2 nodes x 1 actor",
                1,
                True,
                RayIndexOptions(actors=2, max_actors=2, cpus=0.75),
                1,
            ),
        ]
        for name, cpus, two_nodes, options, threads in runs:
            cluster = LocalRay(cpus=cpus, object_store_mb=200)
            try:
                if two_nodes:
                    cluster.add_node(cpus=1)
                on_cluster = settings.model_copy(
                    update={"ray_address": cluster.address, "torch_threads": threads}
                )
                index_on_ray(on_cluster, MODEL, ids[:BATCH], shapes, 16, options)  # warm actors
                cluster.check_loopback(also=(os.getpid(),))
                start = time.perf_counter()
                result = index_on_ray(on_cluster, MODEL, ids, shapes, 16, options)
                rate = count / (time.perf_counter() - start)
            finally:
                import ray

                ray.shutdown()
                cluster.stop()
            rows.append(
                Row(
                    f"index {count} images, {name}",
                    rate,
                    "img/s",
                    floor,
                    "floor",
                    samples=1,
                    note=f"batches per node {sorted(result.batches_per_node.values())}; "
                    f"torch threads per actor {threads or 'all cores'}; includes a new "
                    "pool's actor start (model load)",
                )
            )
    return rows


def cluster_main(quick: bool) -> int:
    # Before Ray is imported: Ray then binds and resolves everything to 127.0.0.1.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    rows = serve_rows(rounds=10 if quick else 100)
    rows += index_rows(count=32 if quick else 96)
    print(render(rows))  # noqa: T201 -- the report is the output
    return 0
