"""The HTTP measurements, each against its in-process reference where there is one."""

from __future__ import annotations

import io
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources

import httpx
import numpy as np
import torch
from PIL import Image

from bench.floor import Reference, grid_png, matplotlib_png
from convscope.render import encode

MODEL = "efficientnet_lite0"
API = f"/api/models/{MODEL}"
MID_LAYERS = ("blocks.4", "blocks.3")  # the cold-grid target layers (14x14 maps)
FILTER_LAYERS = ("conv_stem", "blocks.6.0.conv_pw", "conv_head")
MIX_LAYERS = (
    "conv_stem",
    "blocks.1",
    "blocks.2",
    "blocks.3",
    "blocks.3.0.conv_pw",
    "blocks.4",
    "blocks.5",
    "blocks.6",
    "conv_head",
)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class FreshImages:
    """A bundled photo, perturbed with seeded noise and re-encoded: new bytes, new id, each time."""

    def __init__(self, sample: str = "astronaut.jpg") -> None:
        data = (resources.files("convscope") / "data" / "samples" / sample).read_bytes()
        self.base = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)

    def make(self, seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        noise = rng.integers(-6, 7, self.base.shape, dtype=np.int16)
        pixels = np.clip(self.base + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
        return buffer.getvalue()


def upload(client: httpx.Client, data: bytes, name: str) -> str:
    response = client.post("/api/images", files={"file": (name, data, "image/jpeg")})
    response.raise_for_status()
    return str(response.json()["id"])


def timed_get(client: httpx.Client, path: str) -> float:
    start = time.perf_counter()
    get_ok(client, path)
    return time.perf_counter() - start


def get_ok(client: httpx.Client, path: str) -> httpx.Response:
    response = client.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return response


def activation_path(image_id: str, layer: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"format": "png", **params}.items())
    return f"{API}/images/{image_id}/activations/{layer}?{query}"


@dataclass
class Latencies:
    """Seconds per sample, by measurement name."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)


def activation_latencies(
    client: httpx.Client, ref: Reference, images: FreshImages, per_layer: int, out: Latencies
) -> torch.Tensor:
    """Cold grid (upload, then GET), warm layer switch, render-cache hit, and the floor.

    HTTP samples and in-process samples alternate, image by image, so that anything else
    running on the machine slows both sides alike. Returns the last blocks.4 maps.
    """
    last = torch.empty(0)
    for i in range(per_layer * len(MID_LAYERS)):
        layer = MID_LAYERS[i % len(MID_LAYERS)]
        other = MID_LAYERS[(i + 1) % len(MID_LAYERS)]
        data = images.make(1000 + i)
        x = ref.input(data)

        def floor(layer: str = layer, x: torch.Tensor = x) -> None:
            maps: list[torch.Tensor] = []
            out.add(f"floor forward {layer}", timed(lambda: maps.append(ref.forward(x, layer))))
            out.add(f"floor render {layer}", timed(lambda: grid_png(maps[0])))
            out.add(
                f"floor render fast-png {layer}",
                timed(lambda: grid_png(maps[0], encode=encode.png)),
            )

        if i % 2:
            floor()
        start = time.perf_counter()
        image_id = upload(client, data, f"bench-{i}.jpg")
        uploaded = time.perf_counter()
        cold = get_ok(client, activation_path(image_id, layer))
        done = time.perf_counter()
        out.add(f"upload {layer}", uploaded - start)
        out.add(f"cold GET {layer}", done - uploaded)
        out.add(f"upload+GET {layer}", done - start)
        out.add(f"warm switch {other}", timed_get(client, activation_path(image_id, other)))
        out.add(f"cached GET {layer}", timed_get(client, activation_path(image_id, layer)))
        if not i % 2:
            floor()
        if i < len(MID_LAYERS):  # same picture? compare the served PNG with the floor's
            maps = ref.forward(x, layer)
            served = np.asarray(Image.open(io.BytesIO(cold.content)).convert("RGB"))
            drawn = np.asarray(Image.open(io.BytesIO(grid_png(maps))).convert("RGB"))
            same = served.shape == drawn.shape and np.array_equal(served, drawn)
            out.notes[layer] = (
                "served PNG pixel-identical to the floor's"
                if same
                else f"served {served.shape} vs floor {drawn.shape}: not pixel-identical"
            )
        if layer == "blocks.4":
            last = ref.forward(x, layer).clone()
    return last


def forward_times(ref: Reference, images: FreshImages, n: int, out: Latencies) -> None:
    """The plain forward pass, with every core and with one thread (for the capacity floor)."""
    x = ref.input(images.make(7))
    threads = torch.get_num_threads()
    for _ in range(n):
        out.add("forward", timed(lambda: ref.forward(x, "conv_head")))
        torch.set_num_threads(1)
        try:
            out.add("forward 1 thread", timed(lambda: ref.forward(x, "conv_head")))
        finally:
            torch.set_num_threads(threads)


def matplotlib_latencies(maps: torch.Tensor, n: int, out: Latencies) -> None:
    for _ in range(n):
        out.add("matplotlib blocks.4", timed(lambda: matplotlib_png(maps)))


def filter_latencies(client: httpx.Client, n: int, out: Latencies) -> None:
    """First requests (distinct paddings: nothing cached) and repeats of one request."""
    for layer in FILTER_LAYERS:
        base = f"{API}/layers/{layer}/filters?format=png"
        for padding in range(n):
            out.add(f"filters {layer}", timed_get(client, f"{base}&padding={padding}"))
        for _ in range(n):
            out.add(f"filters {layer} repeat", timed_get(client, f"{base}&padding=0"))


@dataclass
class LoadResult:
    wall: float
    latencies: dict[str, list[float]]
    statuses: dict[int, int]
    health: list[float]
    errors: list[str]
    requests: int


def mixed_requests(image_ids: list[str], total: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    """``total`` (kind, path) requests as one session per image, to be run by a pool of clients.

    A session is what a user does with a fresh upload: the first activation grid (cold: one
    forward pass), then other layers and colormaps (warm), predictions and channel statistics,
    with filter grids in between. Requests within a session run in order.
    """
    rng = random.Random(seed)
    per_session = total // len(image_ids)
    sessions = []
    for k, image_id in enumerate(image_ids):
        count = per_session + (1 if k < total - per_session * len(image_ids) else 0)
        session = [("cold", activation_path(image_id, rng.choice(MIX_LAYERS)))]
        while len(session) < count:
            kind = rng.choice(
                ["warm"] * 50 + ["filters"] * 15 + ["predictions"] * 15 + ["channels"] * 20
            )
            layer = rng.choice(MIX_LAYERS)
            if kind == "warm":
                cmap = rng.choice(("viridis", "magma", "gray"))
                path = activation_path(image_id, layer, colormap=cmap)
            elif kind == "filters":
                path = f"{API}/layers/{rng.choice(FILTER_LAYERS)}/filters?format=png"
            elif kind == "predictions":
                path = f"{API}/images/{image_id}/predictions?top=5"
            else:
                path = f"{API}/images/{image_id}/channels/{layer}?top=10"
            session.append((kind, path))
        sessions.append(session)
    return sessions


def load(
    url: str, sessions: list[list[tuple[str, str]]], clients: int, deadline_s: float
) -> LoadResult:
    """``clients`` threads take sessions in turn; a side thread polls /healthz meanwhile."""
    latencies: dict[str, list[float]] = {}
    statuses: dict[int, int] = {}
    errors: list[str] = []
    health: list[float] = []
    lock = threading.Lock()
    position = iter(range(len(sessions)))
    stop = threading.Event()
    deadline = time.perf_counter() + deadline_s

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            while time.perf_counter() < deadline:
                with lock:
                    k = next(position, None)
                if k is None:
                    return
                for kind, path in sessions[k]:
                    if time.perf_counter() > deadline:
                        return
                    start = time.perf_counter()
                    try:
                        status = client.get(path).status_code
                    except httpx.HTTPError as exc:
                        status = 0
                        with lock:
                            errors.append(f"{path}: {exc!r}")
                    seconds = time.perf_counter() - start
                    with lock:
                        latencies.setdefault(kind, []).append(seconds)
                        latencies.setdefault("all", []).append(seconds)
                        statuses[status] = statuses.get(status, 0) + 1

    def poll_health() -> None:
        with httpx.Client(base_url=url, timeout=10.0) as client:
            while not stop.wait(0.05):
                health.append(timed(lambda: client.get("/healthz").raise_for_status()))

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - start
    stop.set()
    poller.join(timeout=15)
    done = sum(statuses.values())
    return LoadResult(wall, latencies, statuses, health, errors, done)


def scrape(client: httpx.Client, pattern: str) -> dict[str, float]:
    """Prometheus samples whose line matches ``pattern`` ({} when /metrics is absent)."""
    response = client.get("/metrics")
    if response.status_code != 200:
        return {}
    out = {}
    for line in response.text.splitlines():
        if not line.startswith("#") and re.match(pattern, line):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
