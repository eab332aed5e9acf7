"""Colormaps as 256-entry lookup tables (matplotlib's), applied to uint8 maps."""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt

COLORMAPS: tuple[str, ...] = (
    "gray",
    "viridis",
    "magma",
    "inferno",
    "plasma",
    "cividis",
    "coolwarm",
)


@cache
def lookup_table(name: str, size: int = 256) -> npt.NDArray[np.uint8]:
    """Return the colormap ``name`` sampled at ``size`` even steps: read-only ``uint8[size, 3]``."""
    if name == "gray":
        ramp = np.rint(np.linspace(0.0, 255.0, size)).astype(np.uint8)
        table = np.stack([ramp, ramp, ramp], axis=1)
    else:
        from matplotlib import colormaps  # imported lazily: matplotlib is slow to import

        rgba = colormaps[name](np.linspace(0.0, 1.0, size))
        table = np.rint(rgba[:, :3] * 255).astype(np.uint8)
    table.setflags(write=False)
    return table


# A colour grid is drawn as an indexed PNG: one byte per pixel, the colormap as its palette.
# Values take indices 0-254 (255 even steps, both ends of the colormap kept) and index 255 is
# the grey of the padding between tiles. ``gray`` needs no palette: a greyscale PNG, 256 levels.
PAD_INDEX = 255


def levels(name: str) -> int:
    """How many levels a map drawn with colormap ``name`` is quantised to (256 or 255)."""
    return 256 if name == "gray" else 255


def palette(name: str, background: int) -> npt.NDArray[np.uint8] | None:
    """The PNG palette for colormap ``name`` with padding grey ``background``; None for gray."""
    if name == "gray":
        return None
    table = np.empty((256, 3), np.uint8)
    table[:PAD_INDEX] = lookup_table(name, PAD_INDEX)
    table[PAD_INDEX] = background
    return table


def pad_index(name: str, background: int) -> int:
    """The pixel value of the padding: the grey level itself, or the palette's last entry."""
    return background if name == "gray" else PAD_INDEX


def apply(values: npt.NDArray[np.uint8], name: str) -> npt.NDArray[np.uint8]:
    """Colour ``uint8[...]`` values with colormap ``name``: returns ``uint8[..., 3]``."""
    return lookup_table(name)[values]
