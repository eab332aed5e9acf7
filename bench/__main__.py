"""``python -m bench``: every measurement in one run, one table. ``--quick`` for a smoke run.

Starts a server on 127.0.0.1 (its own data folder), measures, stops it. Bounded: fixed
sample counts, a deadline on the load test, timeouts on every request.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from bench import scenarios
from bench.attribution import cam_rows
from bench.collections import collection_rows
from bench.concurrency import concurrency_rows
from bench.floor import Reference
from bench.server import running_server
from bench.table import Row, median, percentile, render
from bench.weights import weights_rows
from convscope.config import Settings
from convscope.services.compute.runtime import available_cpus

log = logging.getLogger("bench")
MIB = 1024**2
OPTIMIZE = Path(__file__).with_name("bench_optimize.py")


def machine() -> str:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
            model,
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return (
        f"{datetime.date.today().isoformat()}; CPU {model}, {available_cpus()} cores available "
        f"({os.cpu_count()} online); torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; Python {platform.python_version()}; load average at start "
        f"{os.getloadavg()[0]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sample counts (smoke test)")
    parser.add_argument("--no-optimize", action="store_true", help="skip bench_optimize.py")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the server only, e.g. CONVSCOPE_TORCH_THREADS=1 or "
        "PYTHONPATH=<another checkout>/backend to measure another version",
    )
    parser.add_argument(
        "--server-only",
        action="store_true",
        help="only the rows measured against the server (with --server-env: another version's)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="only the Ray rows (bench/cluster.py): Serve's added latency, indexing on Ray",
    )
    args = parser.parse_args(argv)
    if args.cluster:
        from bench.cluster import cluster_main

        return cluster_main(args.quick)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    server_env = dict(item.split("=", 1) for item in args.server_env)
    quick = args.quick
    per_layer = 2 if quick else 30
    n_small = 2 if quick else 10
    n_mpl = 1 if quick else 3
    total = 40 if quick else 1000
    pool_images = 4 if quick else 64
    starts = 1 if quick else 3

    torch.set_num_threads(available_cpus())
    header = machine()
    began = time.perf_counter()
    ref = Reference.load()
    images = scenarios.FreshImages()
    lat = scenarios.Latencies()
    cold_starts: list[float] = []

    with running_server(server_env) as server:
        cold_starts.append(server.start_seconds)
        idle = server.memory()
        log.info(
            "server pid %d ready in %.2fs, idle RSS %d MiB",
            server.pid,
            server.start_seconds,
            idle["VmRSS"] // MIB,
        )
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            log.info("forward pass, cold and warm grids against the floor")
            scenarios.forward_times(ref, images, n_small, lat)
            maps = scenarios.activation_latencies(client, ref, images, per_layer, lat)
            log.info("matplotlib")
            scenarios.matplotlib_latencies(maps, n_mpl, lat)
            log.info("filter grids")
            scenarios.filter_latencies(client, n_small, lat)
            log.info("load: %d requests from 8 clients", total)
            pool = [
                scenarios.upload(client, images.make(5000 + k), f"pool-{k}.jpg")
                for k in range(pool_images)
            ]
            sessions = scenarios.mixed_requests(pool, total)
            loaded = scenarios.load(server.url, sessions, clients=8, deadline_s=240.0)
            after = server.memory()
            caches = scenarios.scrape(client, r"convscope_cache_(bytes|hits|misses)")
            log.info("concurrent cold load: one-shot grids for new images, 8 and 32 clients")
            concurrent = concurrency_rows(server.url, ref, quick)
    for _ in range(starts - 1):
        with running_server(server_env) as again:
            cold_starts.append(again.start_seconds)

    rows = table_rows(lat, loaded, idle, after, caches, cold_starts, total)
    rows += concurrent
    if args.server_only:
        print(f"convscope benchmark (server rows): {header}\n")  # noqa: T201
        print(render(rows))  # noqa: T201
        return 0 if loaded.requests == total and not loaded.errors else 1
    log.info("Grad-CAM against pytorch-grad-cam")
    with tempfile.TemporaryDirectory() as scratch:
        rows += cam_rows(Path(scratch), runs=2 if quick else 10)
        rows += weights_rows(Path(scratch), runs=2 if quick else 10)
        log.info("dataset examples: index throughput, examples latency, peak memory")
        rows += collection_rows(Path(scratch), quick)
    print(f"convscope benchmark: {header}\n")  # noqa: T201 -- the report is the output
    print(render(rows))  # noqa: T201
    print(f"\nwall time {time.perf_counter() - began:.0f} s")  # noqa: T201
    if not quick and not args.no_optimize:
        run_optimize_bench()
    return 0 if loaded.requests == total and not loaded.errors else 1


def table_rows(
    lat: scenarios.Latencies,
    loaded: scenarios.LoadResult,
    idle: dict[str, int],
    after: dict[str, int],
    caches: dict[str, float],
    cold_starts: list[float],
    total: int,
) -> list[Row]:
    s = lat.samples

    def ms(name: str) -> float:
        return median(s[name]) * 1000

    def n(name: str) -> int:
        return len(s[name])

    forward = ms("forward")
    rows = [Row("forward pass (in-process)", forward, "ms", samples=n("forward"))]
    for layer in scenarios.MID_LAYERS:
        floor = ms(f"floor forward {layer}") + ms(f"floor render {layer}")
        strict = ms(f"floor forward {layer}") + ms(f"floor render fast-png {layer}")
        rows += [
            Row(
                f"cold grid {layer}: GET after upload",
                ms(f"cold GET {layer}"),
                "ms",
                floor,
                "floor",
                "<= 1.3",
                n(f"cold GET {layer}"),
                note=f"floor = forward {ms(f'floor forward {layer}'):.1f} ms + make_grid and "
                f"Pillow PNG {ms(f'floor render {layer}'):.1f} ms; {lat.notes.get(layer, '')}",
            ),
            Row(
                f"cold grid {layer}: vs strict floor",
                ms(f"cold GET {layer}"),
                "ms",
                strict,
                "strict floor",
                samples=n(f"cold GET {layer}"),
                note="strict floor draws its PNG with convscope's own encoder",
            ),
            Row(
                f"cold grid {layer}: upload + GET",
                ms(f"upload+GET {layer}"),
                "ms",
                floor,
                "floor",
                samples=n(f"upload+GET {layer}"),
                note=f"upload alone {ms(f'upload {layer}'):.1f} ms",
            ),
        ]
    for layer in scenarios.MID_LAYERS:
        rows.append(
            Row(
                f"warm layer switch to {layer}",
                ms(f"warm switch {layer}"),
                "ms",
                forward,
                "forward",
                "<= 0.3",
                n(f"warm switch {layer}"),
            )
        )
    rows.append(
        Row(
            "repeat GET (render cache hit) blocks.4",
            ms("cached GET blocks.4"),
            "ms",
            forward,
            "forward",
            samples=n("cached GET blocks.4"),
        )
    )
    mpl = ms("matplotlib blocks.4")
    rows += [
        Row(
            "blocks.4 grid vs matplotlib: warm",
            ms("warm switch blocks.4"),
            "ms",
            mpl,
            "matplotlib",
            "<= 0.1",
            n("matplotlib blocks.4"),
            note="matplotlib: plt.subplots, imshow per channel, axis off, savefig (Agg); "
            "convscope: HTTP GET drawing the captured maps",
        ),
        Row(
            "blocks.4 grid vs matplotlib: cold",
            ms("cold GET blocks.4"),
            "ms",
            mpl,
            "matplotlib",
            "<= 0.1",
            n("matplotlib blocks.4"),
            note="convscope cold includes the forward pass, matplotlib does not",
        ),
    ]
    for layer in scenarios.FILTER_LAYERS:
        rows += [
            Row(
                f"filters {layer} PNG", ms(f"filters {layer}"), "ms", samples=n(f"filters {layer}")
            ),
            Row(
                f"filters {layer} PNG, repeat",
                ms(f"filters {layer} repeat"),
                "ms",
                samples=n(f"filters {layer} repeat"),
            ),
        ]
    one_thread = median(s["forward 1 thread"])
    capacity = available_cpus() / one_thread
    rps = loaded.requests / loaded.wall
    ok = sum(v for k, v in loaded.statuses.items() if 200 <= k < 300)
    everything = loaded.latencies.get("all", [])
    mix = ", ".join(f"{k} {len(v)}" for k, v in sorted(loaded.latencies.items()) if k != "all")
    rows += [
        Row(
            "throughput, 8 clients, mixed",
            rps,
            "req/s",
            capacity,
            "cores/forward",
            samples=loaded.requests,
            note=f"{mix}; floor = {available_cpus()} cores / {one_thread * 1000:.1f} ms "
            f"one-thread forward; wall {loaded.wall:.1f} s",
        ),
        Row("  latency p50", percentile(everything, 50) * 1000, "ms", samples=len(everything)),
        Row("  latency p99", percentile(everything, 99) * 1000, "ms", samples=len(everything)),
        Row(
            "  errors (non-2xx or failed)",
            loaded.requests - ok,
            "",
            samples=loaded.requests,
            note=f"statuses {dict(sorted(loaded.statuses.items()))}"
            + (f"; first error {loaded.errors[0]}" if loaded.errors else ""),
        ),
        Row(
            "  /healthz p99 under load",
            percentile(loaded.health, 99) * 1000,
            "ms",
            samples=len(loaded.health),
        ),
    ]
    for kind in ("cold", "warm"):
        values = loaded.latencies.get(kind, [])
        rows.append(
            Row(
                f"  {kind} activation p50 under load",
                percentile(values, 50) * 1000,
                "ms",
                samples=len(values),
            )
        )
    settings = Settings()
    cap_bytes = caches.get('convscope_cache_bytes{cache="activations"}', float("nan"))
    ren_bytes = caches.get('convscope_cache_bytes{cache="render"}', float("nan"))
    rows += [
        Row("RSS idle (default model loaded)", idle["VmRSS"] / MIB, "MiB"),
        Row(
            f"RSS after {total} mixed requests",
            after["VmRSS"] / MIB,
            "MiB",
            note=f"peak {after['VmHWM'] / MIB:.0f} MiB; activation cache "
            f"{cap_bytes / MIB:.0f} of {settings.activation_cache_bytes / MIB:.0f} MiB, render "
            f"cache {ren_bytes / MIB:.1f} of {settings.render_cache_bytes / MIB:.0f} MiB "
            "(bound: CONVSCOPE_ACTIVATION_CACHE_BYTES, CONVSCOPE_RENDER_CACHE_BYTES)",
        ),
        Row(
            "cold start: process start to /readyz 200",
            median(cold_starts),
            "s",
            samples=len(cold_starts),
        ),
    ]
    return rows


def run_optimize_bench() -> None:
    """The feature-visualisation benchmark (bench/bench_optimize.py) in a short mode."""
    if not OPTIMIZE.is_file():
        return
    command = [
        sys.executable,
        str(OPTIMIZE),
        "--steps",
        "32",
        "--size",
        "128",
        "--copies",
        "8",
        "--channels",
        "blocks.3:20",
        "conv_head:100",
    ]
    print(f"\n$ {' '.join(command[1:])}  (short mode)")  # noqa: T201
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        print(done.stdout or done.stderr[-3000:])  # noqa: T201
    except subprocess.TimeoutExpired:
        print("bench_optimize.py did not finish in 300 s; skipped")  # noqa: T201


if __name__ == "__main__":
    sys.exit(main())
