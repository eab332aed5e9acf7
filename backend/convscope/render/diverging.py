"""Signed maps in a diverging palette (blue negative, white zero, red positive), and sections.

Pure: arrays in, arrays out. Used for expanded weights onto a layer's channels and for
grouping a filter grid into labelled bands.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# ColorBrewer RdBu's ends; zero is pure white.
NEGATIVE = np.array([33, 102, 172], np.float32)
POSITIVE = np.array([178, 24, 43], np.float32)
WHITE = np.array([255, 255, 255], np.float32)


def symmetric_scale(
    values: npt.NDArray[np.floating], per_map: bool = True
) -> npt.NDArray[np.float32]:
    """``float[N, H, W]`` -> ``[-1, 1]`` divided by the largest magnitude (per map or overall).

    An all-zero map stays zero. Returns a new array.
    """
    v = np.asarray(values, np.float32)
    if per_map:
        peak = np.abs(v).reshape(len(v), -1).max(axis=1).reshape(-1, 1, 1)
    else:
        peak = np.full((1, 1, 1), np.abs(v).max() if v.size else 0.0, np.float32)
    return np.divide(v, peak, out=np.zeros_like(v), where=peak > 0)


def diverging_rgb(unit: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """Values in [-1, 1] (any shape) -> ``uint8[..., 3]``: blue at -1, white at 0, red at +1."""
    t = np.clip(np.asarray(unit, np.float32), -1.0, 1.0)[..., None]
    end = np.where(t < 0, NEGATIVE, POSITIVE)
    rgb = WHITE + np.abs(t) * (end - WHITE)
    return np.rint(rgb).astype(np.uint8)


def stack_sections(
    sections: list[npt.NDArray[np.uint8]], gap: int = 6, background: int = 255
) -> tuple[npt.NDArray[np.uint8], list[int]]:
    """Stack ``uint8[H_i, W_i, 3]`` images top to bottom, left-aligned, ``gap`` rows between.

    Returns the image and the top row of each section.
    """
    if not sections:
        raise ValueError("expected at least one section")
    width = max(s.shape[1] for s in sections)
    height = sum(s.shape[0] for s in sections) + gap * (len(sections) - 1)
    out = np.full((height, width, 3), background, np.uint8)
    tops = []
    y = 0
    for section in sections:
        tops.append(y)
        out[y : y + section.shape[0], : section.shape[1]] = section
        y += section.shape[0] + gap
    return out, tops
