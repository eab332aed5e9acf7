"""A small real collection: crops, flips and noisy copies of the bundled sample photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from convscope.services.facade import Convscope

DEFAULT = "efficientnet_lite0"
# Layers at several depths: pre-activation conv, a linear projection, a block, the last map.
LAYERS = ("conv_stem", "blocks.2.0.conv_pwl", "blocks.4", "bn2")


def variants(service: Convscope, count: int = 24, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` distinct JPEG images made from the samples (crop, flip, noise), 96-160 px."""
    rng = np.random.default_rng(seed)
    photos = []
    for record in service.list_images():
        if record["kind"] == "sample":
            _, data = service.image(record["id"])
            photos.append((record["name"], Image.open(io.BytesIO(data)).convert("RGB")))
    out = []
    for i in range(count):
        name, photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.35, 0.9))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        image = photo.crop((left, top, left + side, top + side)).resize((128, 128))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        pixels = np.asarray(image).astype(np.int16)
        pixels = pixels + rng.integers(-12, 13, pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        out.append((f"{name}-{i}.jpg", buffer.getvalue()))
    return out


@pytest.fixture(scope="session")
def photos(service: Convscope) -> list[tuple[str, bytes]]:
    return variants(service)


def new_collection(service: Convscope, photos: list[tuple[str, bytes]], name: str) -> str:
    cid = str(service.create_collection(name)["id"])
    files = [(n, io.BytesIO(d)) for n, d in photos]
    result = service.add_to_collection(cid, files)  # type: ignore[arg-type]
    assert result["added"] == len(photos)
    return cid


@pytest.fixture(scope="session")
def indexed(service: Convscope, photos: list[tuple[str, bytes]]) -> str:
    """A collection of the 24 photos, indexed on LAYERS with k = 8."""
    cid = new_collection(service, photos, "indexed")
    service.index_now(DEFAULT, cid, LAYERS, 8)
    return cid
