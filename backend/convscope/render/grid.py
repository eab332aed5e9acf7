"""Normalise maps and tile them into one grid image (torchvision's ``make_grid``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Normalize = Literal["channel", "layer"]


@dataclass(frozen=True)
class GridLayout:
    """Where tile ``i`` lies: row ``i // ncol``, column ``i % ncol``, each tile padded."""

    count: int
    nrow: int
    ncol: int
    tile_height: int
    tile_width: int
    padding: int
    scale: int

    def tile_origin(self, i: int) -> tuple[int, int]:
        """Top-left pixel (y, x) of tile ``i`` in the grid image."""
        row, col = divmod(i, self.ncol)
        return (
            row * (self.tile_height + self.padding) + self.padding,
            col * (self.tile_width + self.padding) + self.padding,
        )

    def header(self) -> str:
        return (
            f"nrow={self.nrow};ncol={self.ncol};tile={self.tile_height}x{self.tile_width};"
            f"padding={self.padding};scale={self.scale}"
        )


def to_unit(maps: torch.Tensor, mode: Normalize) -> torch.Tensor:
    """Map float ``Tensor[N, H, W]`` to ``[0, 1]`` per map (``channel``) or jointly (``layer``).

    A constant map becomes all zeros. Returns a new float32 tensor; the input is untouched.
    """
    x = maps.to(torch.float32)
    if mode == "layer":
        lo, hi = x.amin(), x.amax()
        return ((x - lo) / (hi - lo)).nan_to_num_(0.0) if hi > lo else torch.zeros_like(x)
    flat = x.flatten(1)
    lo = flat.amin(1).view(-1, 1, 1)
    span = (flat.amax(1).view(-1, 1, 1) - lo).clamp_min(1e-12)
    out = (x - lo) / span
    out[(span <= 1e-12).expand_as(out)] = 0.0
    return out


def symmetric_unit(weights: torch.Tensor, mode: Literal["filter", "layer"]) -> torch.Tensor:
    """Map signed ``Tensor[N, C, H, W]`` to ``[0, 1]`` with zero at 0.5 (mid-grey).

    Scales by the largest absolute value per filter (``filter``) or over all filters (``layer``).
    """
    w = weights.to(torch.float32)
    if mode == "layer":
        peak = w.abs().amax().clamp_min(1e-12)
    else:
        peak = w.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (w / (2 * peak) + 0.5).clamp_(0.0, 1.0)


def default_ncol(count: int, tile_height: int, tile_width: int) -> int:
    """Columns for a roughly 4:3 landscape grid of ``count`` tiles."""
    cols = math.ceil(math.sqrt(count * 4 / 3 * tile_height / max(tile_width, 1)))
    return max(1, min(count, cols))


def tile(
    images: torch.Tensor,
    *,
    scale: int = 1,
    padding: int = 1,
    ncol: int | None = None,
    pad_value: int = 255,
) -> tuple[torch.Tensor, GridLayout]:
    """Tile ``Tensor[N, C, H, W]`` (uint8, C = 1 or 3) into ``Tensor[C, GH, GW]`` (uint8).

    Tiles are upscaled by an integer ``scale`` with nearest-neighbour, so each weight or
    activation stays a crisp square. The layout and pixels are those of torchvision's
    ``make_grid`` on the upscaled tiles (the tests hold it to that), drawn in one pass
    straight into a row-major ``[GH, GW, C]`` buffer: tiles are widened (small), then each of
    their rows is copied ``scale`` times as one run of bytes, and the PNG encoder reads the
    result (``to_pixels``) without a transpose.
    """
    n, channels, h, w = images.shape
    tile_h, tile_w = h * scale, w * scale
    ncol = ncol or default_ncol(n, tile_h, tile_w)
    if n == 1:  # like make_grid: a lone image as it is, without padding
        padding = 0
    cols = min(ncol, n)
    rows = math.ceil(n / cols)
    out = np.full(
        (rows * (tile_h + padding) + padding, cols * (tile_w + padding) + padding, channels),
        pad_value,
        dtype=np.uint8,
    )
    pixels = images.permute(0, 2, 3, 1).numpy()  # [N, H, W, C], a view
    if scale > 1:  # widen first: small, and then each tile row is one contiguous run of bytes
        pixels = np.repeat(pixels, scale, axis=2)
    run = tile_w * channels
    runs = np.ascontiguousarray(pixels).reshape(n, h, run)
    sy, sx = out.strides[:2]
    # out viewed as [row, y, y-repeat, col, bytes of one tile row] over the tiles' pixels.
    cells = np.lib.stride_tricks.as_strided(
        out[padding:, padding:],
        shape=(rows, h, scale, cols, run),
        strides=((tile_h + padding) * sy, scale * sy, sy, (tile_w + padding) * sx, 1),
    )
    full, rest = divmod(n, cols)
    cells[:full] = runs[: full * cols].reshape(full, cols, h, run).transpose(0, 2, 1, 3)[:, :, None]
    if rest:
        cells[full, :, :, :rest] = runs[full * cols :].transpose(1, 0, 2)[:, None]
    layout = GridLayout(n, rows, ncol, tile_h, tile_w, padding, scale)
    return torch.from_numpy(out).permute(2, 0, 1), layout


def to_pixels(grid: torch.Tensor) -> torch.Tensor:
    """``Tensor[C, H, W]`` -> ``Tensor[H, W]`` (C = 1) or ``Tensor[H, W, 3]`` for encoding."""
    return grid[0] if grid.shape[0] == 1 else grid.permute(1, 2, 0)
