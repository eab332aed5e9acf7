"""Legends: every colour-mapped PNG says which values its colours stand for, and the JSON too.

The scales are checked against the exact values (NPY) and against the pixels drawn.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from convscope.render import colormap
from tests.conftest import DEFAULT

M = f"/api/models/{DEFAULT}"


def _npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


def _scale(headers) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    pairs = headers["x-convscope-scale"].split(";")
    return [(float(lo), float(hi)) for lo, hi in (p.split(",") for p in pairs)]


def _indices(content: bytes) -> np.ndarray:
    """An indexed (palette) PNG's pixel indices, or a greyscale PNG's levels."""
    image = Image.open(io.BytesIO(content))
    assert image.mode in ("P", "L"), image.mode
    return np.asarray(image)


def _tiles(pixels: np.ndarray, grid: str) -> list[np.ndarray]:
    """Tiles at 1:1 (one pixel per value) from the ``X-Convscope-Grid`` layout."""
    layout = dict(part.split("=") for part in grid.split(";"))
    ncol, pad, s = int(layout["ncol"]), int(layout["padding"]), int(layout["scale"])
    th, tw = map(int, layout["tile"].split("x"))
    count = int(layout["nrow"]) * ncol
    out = []
    for i in range(count):
        row, col = divmod(i, ncol)
        y, x = row * (th + pad) + pad, col * (tw + pad) + pad
        out.append(pixels[y : y + th : s, x : x + tw : s])
    return out


@pytest.mark.parametrize("normalize", ["channel", "layer"])
def test_feature_map_scale_matches_the_npy(client: TestClient, samples, normalize) -> None:
    url = f"{M}/images/{samples['cat']}/activations/blocks.3"
    params = {"channels": "0-11", "order": "mean", "normalize": normalize}
    png = client.get(url, params=params)
    npy = _npy(client.get(url, params=params | {"format": "npy"}).content)
    assert png.status_code == 200, png.text
    assert png.headers["x-convscope-colormap"] == "viridis"
    assert png.headers["x-convscope-scale-mode"] == normalize
    scale = _scale(png.headers)
    if normalize == "layer":
        assert scale == [pytest.approx((float(npy.min()), float(npy.max())), rel=1e-6)]
    else:
        want = list(zip(npy.reshape(12, -1).min(1), npy.reshape(12, -1).max(1), strict=True))
        assert scale == [pytest.approx((float(a), float(b)), rel=1e-6) for a, b in want]
    info = client.get(url, params=params | {"format": "json"}).json()["scale"]
    assert info["mode"] == normalize and info["colormap"] == "viridis"
    lows = info["low"] if normalize == "channel" else [info["low"]]
    assert lows == pytest.approx([lo for lo, _ in scale], rel=1e-6)
    # The pixels: value v is drawn at palette index round((v - low) / (high - low) * 254).
    tiles = _tiles(_indices(png.content), png.headers["x-convscope-grid"])
    for i, values in enumerate(npy):
        lo, hi = scale[0] if normalize == "layer" else scale[i]
        want = np.floor((values - lo) / (hi - lo) * 254 + 0.5)
        assert np.abs(tiles[i].astype(int) - want).max() <= 1


def test_pointwise_l2_filters_are_not_a_white_image(client: TestClient) -> None:
    """``blocks.2.0.conv_pw`` is 1x1: per-filter scaling drew every tile at its own maximum."""
    url = f"{M}/layers/blocks.2.0.conv_pw/filters"
    weights = _npy(client.get(url, params={"format": "npy"}).content)  # [O, I, 1, 1]
    norms = np.sqrt((weights.astype(np.float64) ** 2).sum(1))[:, 0, 0]
    for params in ({"reduce": "l2"}, {"reduce": "l2", "normalize": "filter"}):
        png = client.get(url, params=params)
        assert png.status_code == 200, png.text
        assert png.headers["x-convscope-normalize"] == "layer"
        assert png.headers["x-convscope-scale-mode"] == "layer"
        assert png.headers["x-convscope-colormap"] == "viridis"
        assert _scale(png.headers) == [pytest.approx((0.0, norms.max()), rel=1e-6)]
        tiles = _tiles(_indices(png.content), png.headers["x-convscope-grid"])
        drawn = np.array([t[0, 0] for t in tiles[: len(norms)]], dtype=int)
        want = np.floor(norms / norms.max() * 254 + 0.5)
        assert np.abs(drawn - want).max() <= 1
        assert len(np.unique(drawn)) > 10  # the values differ, and so do the colours


def test_pointwise_and_reduced_filters_default_to_a_diverging_layer_scale(
    client: TestClient,
) -> None:
    url = f"{M}/layers/blocks.2.0.conv_pw/filters"
    weights = _npy(client.get(url, params={"format": "npy"}).content)
    for params, values in (
        ({"input_channel": 3}, weights[:, 3]),
        ({}, weights.mean(1)),
    ):
        png = client.get(url, params=params)
        info = client.get(url, params=params | {"format": "json"}).json()
        assert png.headers["x-convscope-colormap"] == "coolwarm" == info["colormap"]
        peak = float(np.abs(values).max())
        assert _scale(png.headers) == [pytest.approx((-peak, peak), rel=1e-6)]
        assert info["scale"] == {
            "mode": "layer",
            "colormap": "coolwarm",
            "low": pytest.approx(-peak, rel=1e-6),
            "high": pytest.approx(peak, rel=1e-6),
        }
        assert np.allclose(np.asarray(info["drawn"])[:, 0], values, atol=1e-7)
        drawn = np.array(
            [
                t[0, 0]
                for t in _tiles(_indices(png.content), png.headers["x-convscope-grid"])[
                    : len(values)
                ]
            ],
            dtype=int,
        )
        want = np.floor((values[:, 0, 0] / (2 * peak) + 0.5) * 254 + 0.5)
        assert np.abs(drawn - want).max() <= 1


def test_rgb_and_depthwise_filters_keep_a_per_filter_scale(client: TestClient) -> None:
    for layer in ("conv_stem", "blocks.1.0.conv_dw"):
        url = f"{M}/layers/{layer}/filters"
        weights = _npy(client.get(url, params={"format": "npy"}).content)
        png = client.get(url)
        assert png.headers["x-convscope-scale-mode"] == "filter"
        peaks = np.abs(weights).reshape(len(weights), -1).max(1)
        assert _scale(png.headers) == [pytest.approx((-p, p), rel=1e-6) for p in peaks]
        layer_wide = client.get(url, params={"normalize": "layer"})
        assert _scale(layer_wide.headers) == [pytest.approx((-peaks.max(), peaks.max()), rel=1e-6)]
    assert client.get(f"{M}/layers/conv_stem/filters").headers["x-convscope-colormap"] == "rgb"


def test_cam_scale_is_the_raw_cam_range(client: TestClient, samples) -> None:
    url = f"{M}/images/{samples['cat']}/cam"
    png = client.get(url)
    body = client.get(url, params={"format": "json"}).json()
    raw = np.asarray(body["cam"], dtype=np.float32)
    assert png.headers["x-convscope-colormap"] == "jet"
    assert _scale(png.headers) == [pytest.approx((float(raw.min()), float(raw.max())), rel=1e-6)]
    assert body["scale"]["low"] == pytest.approx(float(raw.min()), rel=1e-6)
    heat = _npy(client.get(url, params={"format": "npy"}).content)
    assert heat.min() == pytest.approx(0.0, abs=1e-6) and heat.max() == pytest.approx(1, abs=1e-5)


def test_saliency_scale_tops_at_the_clipping_percentile(client: TestClient, samples) -> None:
    url = f"{M}/images/{samples['coffee']}/saliency"
    png = client.get(url)
    values = _npy(client.get(url, params={"format": "npy"}).content)
    assert png.headers["x-convscope-colormap"] == "inferno"
    top = float(np.percentile(values, 99.5))
    assert _scale(png.headers) == [pytest.approx((0.0, top), rel=1e-6)]
    # Pixels at or above the top are drawn in the colormap's last colour.
    rgb = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    last = colormap.lookup_table("inferno")[255]
    assert (rgb[values >= top] == last).all()
