"""The read side of an index: dataset examples, per-channel statistics, z-scores; drawings.

Pure functions of an :class:`~convscope.services.collections.index.LayerPartial` (and, to
draw, of the network-input views of the images), so the service only fetches and caches.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from convscope.render import encode, grid, overlay
from convscope.services.collections.index import HIST_EDGES, LayerPartial
from convscope.services.models.receptive import LayerBoxes

By = Literal["max", "mean"]
Show = Literal["patch", "image", "overlay"]
TILE = 96  # pixels of one patch tile in the PNG grid
BOX_COLOUR = (255, 64, 32)

STAT_COLUMNS = ("mean", "std", "max", "sparsity", "dead")


def examples(
    layer: LayerPartial, images: list[str], channel: int, k: int, by: By, boxes: LayerBoxes
) -> list[dict[str, Any]]:
    """``[{image_id, score, y, x, box: [top, left, bottom, right]}]``, best first."""
    top = layer.top_max if by == "max" else layer.top_mean
    out = []
    for slot in range(min(k, top.score.shape[1])):
        y, x = divmod(int(top.pos[channel, slot]), layer.width)
        out.append(
            {
                "image_id": images[int(top.image[channel, slot])],
                "score": float(top.score[channel, slot]),
                "y": y,
                "x": x,
                "box": boxes.box(y, x),
            }
        )
    return out


def channel_table(layer: LayerPartial) -> dict[str, npt.NDArray[np.float64]]:
    """Per channel: mean, std (over every position of every image), max, sparsity, dead."""
    positions = max(1, layer.count * layer.height * layer.width)
    mean = layer.total / positions
    var = np.maximum(layer.total_sq / positions - mean * mean, 0.0)
    return {
        "mean": mean,
        "std": np.sqrt(var),
        "max": layer.max.astype(np.float64),
        "sparsity": layer.nonpos / positions,
        "dead": (layer.max <= 0).astype(np.float64),
    }


def stats_json(layer_name: str, layer: LayerPartial) -> dict[str, Any]:
    table = channel_table(layer)
    channels = [
        {
            "index": c,
            "mean": float(table["mean"][c]),
            "std": float(table["std"][c]),
            "max": float(table["max"][c]),
            "sparsity": float(table["sparsity"][c]),
            "dead": bool(table["dead"][c]),
            "histogram": layer.hist[c].tolist(),
        }
        for c in range(layer.channels)
    ]
    return {
        "layer": layer_name,
        "shape": [layer.channels, layer.height, layer.width],
        "images": layer.count,
        "dead": [c for c in range(layer.channels) if table["dead"][c]],
        "histogram": {
            "of": "per-image spatial maximum",
            "edges": HIST_EDGES.tolist(),
            "note": "bin 0 is below edges[0], bin i is [edges[i-1], edges[i]), the last is above",
        },
        "channels": channels,
    }


def stats_array(layer: LayerPartial) -> npt.NDArray[np.float64]:
    """``float64[C, 5 + bins]``: mean, std, max, sparsity, dead (0/1), histogram counts."""
    table = channel_table(layer)
    columns = [table[name][:, None] for name in STAT_COLUMNS]
    return np.concatenate([*columns, layer.hist.astype(np.float64)], axis=1)


def image_means_distribution(layer: LayerPartial) -> tuple[npt.NDArray[np.float64], ...]:
    """Mean and std over the collection's images of each channel's per-image mean."""
    n = max(1, layer.count)
    mu = layer.mean_sum / n
    sd = np.sqrt(np.maximum(layer.mean_sq / n - mu * mu, 0.0))
    return mu, sd


def zscores(values: npt.NDArray[np.floating], layer: LayerPartial) -> npt.NDArray[np.float64]:
    """``(value - collection mean) / collection std`` per channel; 0 where the std is 0."""
    mu, sd = image_means_distribution(layer)
    z = np.zeros_like(mu)
    np.divide(values.astype(np.float64) - mu, sd, out=z, where=sd > 0)
    return z


def _draw_box(pixels: npt.NDArray[np.uint8], box: list[int], width: int = 2) -> None:
    top, left, bottom, right = box
    h, w = pixels.shape[:2]
    top, left = max(0, top), max(0, left)
    bottom, right = min(h, bottom), min(w, right)
    if bottom <= top or right <= left:
        return
    colour = np.array(BOX_COLOUR, np.uint8)
    pixels[top : min(bottom, top + width), left:right] = colour
    pixels[max(top, bottom - width) : bottom, left:right] = colour
    pixels[top:bottom, left : min(right, left + width)] = colour
    pixels[top:bottom, max(left, right - width) : right] = colour


def patch(view: torch.Tensor, box: list[int], size: int = TILE) -> torch.Tensor:
    """The box's crop of ``view`` (``Tensor[3, S, S]`` in [0, 1]) resized into a square tile.

    Aspect kept; the rest of the tile is white. Returns ``Tensor[3, size, size]`` in [0, 1].
    """
    top, left, bottom, right = box
    crop = view[:, top:bottom, left:right]
    if crop.numel() == 0:
        return torch.ones(3, size, size)
    h, w = crop.shape[1:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(crop[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    tile = torch.ones(3, size, size)
    oy, ox = (size - nh) // 2, (size - nw) // 2
    tile[:, oy : oy + nh, ox : ox + nw] = resized.clamp(0, 1)
    return tile


def whole(
    view: torch.Tensor, box: list[int], heat: torch.Tensor | None, alpha: float = 0.5
) -> torch.Tensor:
    """The whole view with the box drawn, the channel's map ``heat`` (``[h, w]``) overlaid."""
    pixels = encode.to_uint8(view).transpose(1, 2, 0).copy()
    if heat is not None:
        size = view.shape[1:]
        up = F.interpolate(heat[None, None].float(), size=size, mode="bilinear")[0, 0]
        lo, hi = float(up.min()), float(up.max())
        unit = ((up - lo) / (hi - lo)).numpy() if hi > lo else np.zeros(size, np.float32)
        pixels = overlay.overlay(pixels, unit, alpha=alpha, cmap="viridis")
    _draw_box(pixels, box)
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)


def grid_png(tiles: list[torch.Tensor], ncol: int | None = None) -> bytes:
    """PNG of ``Tensor[3, H, W]`` tiles in [0, 1], all the same size, in a grid."""
    stacked = torch.from_numpy(encode.to_uint8(torch.stack(tiles)))
    tiled, _ = grid.tile(stacked, padding=2, ncol=ncol, pad_value=255)
    return encode.png(grid.to_pixels(tiled).numpy())
