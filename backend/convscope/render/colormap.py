"""Colormaps as 256-entry lookup tables (matplotlib's), applied to uint8 maps."""

from __future__ import annotations

from functools import cache
from typing import Literal

import numpy as np
import numpy.typing as npt

Colormap = Literal["gray", "viridis", "magma", "inferno", "plasma", "cividis", "coolwarm"]
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
def lookup_table(name: str) -> npt.NDArray[np.uint8]:
    """Return the colormap ``name`` as a read-only ``uint8[256, 3]`` RGB table."""
    if name == "gray":
        ramp = np.arange(256, dtype=np.uint8)
        table = np.stack([ramp, ramp, ramp], axis=1)
    else:
        from matplotlib import colormaps  # imported lazily: matplotlib is slow to import

        rgba = colormaps[name](np.linspace(0.0, 1.0, 256))
        table = np.rint(rgba[:, :3] * 255).astype(np.uint8)
    table.setflags(write=False)
    return table


def apply(values: npt.NDArray[np.uint8], name: str) -> npt.NDArray[np.uint8]:
    """Colour ``uint8[...]`` values with colormap ``name``: returns ``uint8[..., 3]``."""
    return lookup_table(name)[values]
