"""Shared by the filter and feature-map views: bounds on a grid's size, colour grids, headers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from convscope.errors import InvalidParameterError, ResponseTooLargeError
from convscope.render import colormap, encode, grid


@dataclass(frozen=True)
class GridBounds:
    """The largest picture a request may ask for (``CONVSCOPE_MAX_SCALE``, ``..._GRID_PIXELS``)."""

    max_scale: int
    max_grid_pixels: int
    max_json_floats: int

    def check_scale(self, scale: int) -> None:
        if not 1 <= scale <= self.max_scale:
            raise InvalidParameterError(
                "scale", f"expected 1 <= scale <= {self.max_scale}, got {scale}"
            )

    def check_grid(self, count: int, h: int, w: int, scale: int, padding: int) -> None:
        ncol = grid.default_ncol(count, h, w)
        nrow = -(-count // ncol)
        pixels = (nrow * (h * scale + padding) + padding) * (ncol * (w * scale + padding) + padding)
        if pixels > self.max_grid_pixels:
            raise ResponseTooLargeError(
                f"the grid would be {pixels} pixels, above the limit of "
                f"{self.max_grid_pixels}; lower scale, pick fewer channels, or use format=npy"
            )

    def check_json_floats(self, count: int, what: str) -> None:
        if count > self.max_json_floats:
            raise ResponseTooLargeError(
                f"{what} would hold {count} floats, above the limit of "
                f"{self.max_json_floats}; use format=npy (or pick fewer channels)"
            )


def check_colormap(name: str) -> None:
    if name not in colormap.COLORMAPS:
        raise InvalidParameterError(
            "colormap", f"expected one of {', '.join(colormap.COLORMAPS)}, got {name!r}"
        )


def colour_grid(
    unit: torch.Tensor, name: str, scale: int, padding: int, background: int
) -> tuple[bytes, grid.GridLayout]:
    """Maps in [0, 1] (``Tensor[N, H, W]``) as one PNG grid in colormap ``name``.

    Drawn as indices into the colormap (an indexed PNG, or greyscale for ``gray``), so tiling
    and compression handle one byte per pixel instead of three.
    """
    levels = encode.to_uint8(unit, colormap.levels(name))
    image, layout = grid.tile(
        torch.from_numpy(levels).unsqueeze(1),
        scale=scale,
        padding=padding,
        pad_value=colormap.pad_index(name, background),
    )
    pixels = grid.to_pixels(image).numpy()
    return encode.png(pixels, palette=colormap.palette(name, background)), layout


def summary(maps: torch.Tensor) -> dict[str, list[float]]:
    """Per-row min, max, mean and std of ``Tensor[N, ...]``."""
    flat = maps.flatten(1)
    return {
        "min": flat.amin(1).tolist(),
        "max": flat.amax(1).tolist(),
        "mean": flat.mean(1).tolist(),
        "std": flat.std(1, unbiased=False).tolist(),
    }


def shape_header(t: torch.Tensor | np.ndarray) -> str:
    return ",".join(str(s) for s in t.shape)


def layout_dict(layout: grid.GridLayout) -> dict[str, int]:
    return {
        "count": layout.count,
        "nrow": layout.nrow,
        "ncol": layout.ncol,
        "tile_height": layout.tile_height,
        "tile_width": layout.tile_width,
        "padding": layout.padding,
        "scale": layout.scale,
    }
