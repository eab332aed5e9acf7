"""Concurrent cold load: clients posting one-shot grids for images the server has never seen.

What other services do (``POST /api/models/{model}/activations``, PNG, ``blocks.3``), against
the floor measured in the same run: a plain in-process loop over the same JPEG bytes (decode,
preprocess, forward, make_grid + PNG), at batch 1 and at batch 8, the better of the two.
With 8 clients the service should keep up with the floor (images/s) and answer each request
in about the time the floor needs for 8 images; with 32 clients the admission queue sheds
what it cannot serve promptly (503 with Retry-After) instead of letting latency grow.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources

import httpx
import numpy as np
import torch
from PIL import Image

from bench.floor import Reference, grid_png
from bench.table import Row, median, percentile

LAYER = "blocks.3"
MODEL = "efficientnet_lite0"
SAMPLES = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")


def new_jpegs(count: int, seed: int) -> list[bytes]:
    """``count`` distinct 320x240 JPEGs: bundled photos, resized, with seeded noise."""
    bases = []
    for name in SAMPLES:
        data = (resources.files("convscope") / "data" / "samples" / name).read_bytes()
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((320, 240))
        bases.append(np.asarray(image, dtype=np.int16))
    out = []
    for k in range(count):
        rng = np.random.default_rng(seed + k)
        base = bases[k % len(bases)]
        pixels = np.clip(base + rng.integers(-6, 7, base.shape, dtype=np.int16), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def floor_images_per_second(ref: Reference, jpegs: list[bytes], batch: int) -> float:
    """Decode, preprocess, forward ``batch`` images at once, then a grid PNG per image."""
    seen: list[torch.Tensor] = []
    handle = ref.model.get_submodule(LAYER).register_forward_hook(
        lambda _m, _i, out: seen.append(out)
    )
    start = time.perf_counter()
    try:
        for k in range(0, len(jpegs), batch):
            chunk = torch.stack([ref.input(data) for data in jpegs[k : k + batch]])
            seen.clear()
            with torch.inference_mode():
                ref.model(chunk)
            for maps in seen[0]:
                grid_png(maps)
    finally:
        handle.remove()
    return len(jpegs) / (time.perf_counter() - start)


@dataclass
class OneShotLoad:
    clients: int
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of the 200s
    statuses: dict[int, int] = field(default_factory=dict)
    shed_without_retry_after: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)


def one_shot_load(url: str, jpegs: list[bytes], clients: int, deadline_s: float) -> OneShotLoad:
    """``clients`` threads post the images (each once) as fast as answers come back."""
    result = OneShotLoad(clients)
    lock = threading.Lock()
    position = iter(range(len(jpegs)))
    deadline = time.perf_counter() + deadline_s

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            while time.perf_counter() < deadline:
                with lock:
                    k = next(position, None)
                if k is None:
                    return
                start = time.perf_counter()
                try:
                    response = client.post(
                        f"/api/models/{MODEL}/activations",
                        files={"file": (f"new-{k}.jpg", jpegs[k], "image/jpeg")},
                        data={"layer": LAYER, "format": "png"},
                    )
                    status = response.status_code
                    shed_bad = status == 503 and "retry-after" not in response.headers
                except httpx.HTTPError as exc:
                    status, shed_bad = 0, False
                    with lock:
                        result.errors.append(repr(exc))
                seconds = time.perf_counter() - start
                with lock:
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    result.shed_without_retry_after += shed_bad
                    if status == 200:
                        result.latencies.append(seconds)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    result.wall = time.perf_counter() - start
    return result


def concurrency_rows(url: str, ref: Reference, quick: bool) -> list[Row]:
    """The floor, then 8 and 32 clients on fresh images, side by side in one run."""
    count = 16 if quick else 64
    floor_jpegs = new_jpegs(count, seed=100_000)
    ref.model(torch.zeros(1, 3, 224, 224))  # warm up, as the server is warm
    floors = {b: floor_images_per_second(ref, floor_jpegs, b) for b in (1, 8)}
    best = max(floors, key=lambda b: floors[b])
    floor = floors[best]
    note_floor = f"floor: batch 1 {floors[1]:.1f}, batch 8 {floors[8]:.1f} images/s"
    rows: list[Row] = []
    for clients, seed in ((8, 200_000), (32, 300_000)):
        load = one_shot_load(url, new_jpegs(count, seed), clients, deadline_s=120.0)
        ips = load.ok / load.wall if load.wall else 0.0
        bound = clients / floor * 1000  # ms: the floor's time for one image per client
        statuses = dict(sorted(load.statuses.items()))
        rows.append(
            Row(
                f"one-shot cold {LAYER}, {clients} clients",
                ips,
                "img/s",
                floor,
                f"floor b{best}",
                ">= 0.9" if clients == 8 else "",
                sum(load.statuses.values()),
                note=f"{note_floor}; statuses {statuses}; wall {load.wall:.1f} s",
            )
        )
        rows.append(
            Row(
                f"  median latency, {clients} clients",
                median(load.latencies) * 1000,
                "ms",
                bound if clients == 8 else None,
                f"{clients}/floor" if clients == 8 else "",
                "<= 1.2" if clients == 8 else "",
                len(load.latencies),
                note=f"p99 {percentile(load.latencies, 99) * 1000:.0f} ms",
            )
        )
        failed = sum(v for k, v in load.statuses.items() if k not in (200, 503))
        shed = load.statuses.get(503, 0)
        rows.append(
            Row(
                f"  errors / shed (503), {clients} clients",
                failed,
                "",
                samples=sum(load.statuses.values()),
                note=f"{shed} shed with 503, {load.shed_without_retry_after} of them without "
                "Retry-After" + (f"; first error {load.errors[0]}" if load.errors else ""),
            )
        )
    return rows
