"""Heatmaps coloured and laid over images; image batches as one PNG strip. Pure functions."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from convscope.render import colormap, encode, grid


def heatmap_rgb(heat: npt.NDArray[np.floating], cmap: str = "jet") -> npt.NDArray[np.uint8]:
    """Colour ``float[H, W]`` in [0, 1] with matplotlib colormap ``cmap``: ``uint8[H, W, 3]``."""
    levels = np.rint(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    return colormap.apply(levels, cmap)


def overlay(
    image: npt.NDArray[np.uint8],
    heat: npt.NDArray[np.floating],
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> npt.NDArray[np.uint8]:
    """Blend ``(1 - alpha) * image + alpha * colour(heat)``: ``uint8[H, W, 3]``.

    ``image`` is ``uint8[H, W, 3]``, ``heat`` ``float[H, W]`` in [0, 1] of the same size.
    """
    if image.shape[:2] != heat.shape:
        raise ValueError(f"image {image.shape[:2]} and heatmap {heat.shape} sizes differ")
    coloured = heatmap_rgb(heat, cmap).astype(np.float32)
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * coloured
    return np.rint(np.clip(mixed, 0, 255)).astype(np.uint8)


def clip_value(values: npt.NDArray[np.floating], *, percentile: float = 99.5) -> float:
    """The value :func:`unit_map` draws at the top of the colormap (0 for an empty map)."""
    return float(np.percentile(values, percentile)) if values.size else 0.0


def unit_map(
    values: npt.NDArray[np.floating], *, percentile: float = 99.5
) -> npt.NDArray[np.float32]:
    """Scale a non-negative ``float[H, W]`` map (e.g. saliency) to [0, 1], clipping at the
    ``percentile``-th value so a few extreme pixels do not turn the rest black."""
    top = clip_value(values, percentile=percentile)
    if top <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip(values / top, 0.0, 1.0).astype(np.float32)


def images_png(images: torch.Tensor, *, padding: int = 2) -> bytes:
    """PNG of ``Tensor[N, 3, H, W]`` in [0, 1] side by side in one row (white gaps)."""
    pixels = torch.from_numpy(encode.to_uint8(images.detach().cpu().float()))
    tiled, _ = grid.tile(pixels, padding=padding, ncol=images.shape[0], pad_value=255)
    return encode.png(grid.to_pixels(tiled).numpy())
