"""First-layer filters, measured: orientation, spatial frequency, colour class, energy.

A filter ``W[3, k, k]`` is read in two parts:

- **Colour.** The luminance share is the fraction of ``||W||^2`` along (1, 1, 1)/sqrt(3) at
  every pixel. At least ``GREY_SHARE`` of it: ``grey``. Otherwise, per pixel, the colour
  vector's positive and negative parts are compared: when the weaker sign carries at least
  ``OPPONENT_SHARE`` of the magnitude (summed over pixels, weighed by magnitude), the filter
  sets colours against each other: ``colour-opponent`` (red/green, blue/yellow...); else it
  prefers one hue of one sign: ``single colour``.
- **Pattern.** The dominant spatial pattern is the first right singular vector of ``W`` as a
  ``[3, k*k]`` matrix (the luminance pattern of a grey filter, the opponent pattern of an
  opponent one). Its power spectrum, zero-padded to ``FFT_SIZE`` for a fine frequency grid,
  peaks at the grating's wave vector (fx, fy): frequency ``sqrt(fx^2 + fy^2)`` in cycles
  per pixel, orientation the wave vector's angle in [0, 180) degrees, counter-clockwise
  from the x axis as drawn (y up): 0 = vertical stripes (intensity changes left to right),
  90 = horizontal stripes. A peak at zero frequency is a blob: frequency 0, orientation None.
- **Energy**: ``sum(W^2)``. A filter with less than ``DEAD_ENERGY`` of the layer's largest
  energy is dead (trained to ~0, as a few of EfficientNet-Lite0's are): grey, no pattern.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

ColourClass = Literal["grey", "colour-opponent", "single colour"]
CLASSES: tuple[ColourClass, ...] = ("grey", "colour-opponent", "single colour")
GREY_SHARE = 0.7
OPPONENT_SHARE = 0.25
FFT_SIZE = 256
BLOB_FREQUENCY = 1.0 / 64  # below this (a fraction of a cycle across a large kernel): a blob
DEAD_ENERGY = 1e-9  # a filter with less than this fraction of the layer's largest energy


@dataclass(frozen=True)
class FilterTraits:
    index: int
    orientation: float | None
    frequency: float
    colour: ColourClass
    energy: float
    luminance_share: float
    opponency: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def colour_class(weight: torch.Tensor) -> tuple[ColourClass, float, float]:
    """``Tensor[3, kH, kW]`` -> (class, luminance share, opponency), both shares in [0, 1]."""
    w = weight.to(torch.float64).flatten(1)  # [3, P]
    total = w.square().sum()
    if total <= 0:
        return "grey", 1.0, 0.0
    luminance = w.sum(0).square().sum() / 3.0 / total
    positive = w.clamp_min(0).sum(0)
    negative = (-w).clamp_min(0).sum(0)
    magnitude = (positive + negative).sum()
    opponency = float(2 * torch.minimum(positive, negative).sum() / magnitude)
    share = float(luminance)
    if share >= GREY_SHARE:
        return "grey", share, opponency
    if opponency >= OPPONENT_SHARE:
        return "colour-opponent", share, opponency
    return "single colour", share, opponency


def dominant_pattern(weight: torch.Tensor) -> torch.Tensor:
    """The first right singular vector of ``Tensor[C, kH, kW]``, as ``Tensor[kH, kW]``."""
    c, h, w = weight.shape
    _, _, vh = torch.linalg.svd(weight.to(torch.float64).reshape(c, h * w), full_matrices=False)
    return vh[0].reshape(h, w)


def grating(pattern: torch.Tensor, size: int = FFT_SIZE) -> tuple[float, float | None]:
    """Peak of the zero-padded power spectrum of ``Tensor[kH, kW]``: (frequency, orientation)."""
    h, w = pattern.shape
    size = max(size, h, w)
    power = torch.fft.rfft2(pattern, s=(size, size)).abs().square()  # [size, size // 2 + 1]
    flat = int(power.argmax())
    row, col = divmod(flat, power.shape[1])
    fy = (row if row <= size // 2 else row - size) / size  # cycles per pixel, y down
    fx = col / size
    frequency = math.hypot(fx, fy)
    if frequency < BLOB_FREQUENCY:
        return 0.0, None
    # y grows downwards in the array; the drawn picture has y up, hence -fy.
    orientation = math.degrees(math.atan2(-fy, fx)) % 180.0
    return frequency, orientation


def analyse(weight: torch.Tensor) -> list[FilterTraits]:
    """Traits of each filter of ``Tensor[O, 3, kH, kW]`` (float), in filter order."""
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected filters [O, 3, kH, kW], got {list(weight.shape)}")
    out = []
    filters = weight.detach().to("cpu", torch.float64)
    floor = DEAD_ENERGY * float(filters.square().flatten(1).sum(1).max()) if len(filters) else 0.0
    for index, filt in enumerate(filters):
        colour: ColourClass
        if float(filt.square().sum()) <= floor:  # a dead filter: no colour, no pattern
            colour, share, opponency = "grey", 1.0, 0.0
            frequency, orientation = 0.0, None
        else:
            colour, share, opponency = colour_class(filt)
            frequency, orientation = grating(dominant_pattern(filt))
        out.append(
            FilterTraits(
                index=index,
                orientation=None if orientation is None else round(orientation, 3),
                frequency=round(frequency, 5),
                colour=colour,
                energy=float(filt.square().sum()),
                luminance_share=round(share, 4),
                opponency=round(opponency, 4),
            )
        )
    return out


def sorted_groups(traits: list[FilterTraits]) -> dict[ColourClass, list[int]]:
    """Filter indices grouped by colour class (grey, colour-opponent, single colour).

    Within a group: oriented filters by orientation then frequency, blobs last by energy.
    """
    groups: dict[ColourClass, list[int]] = {}
    for name in CLASSES:
        members = [t for t in traits if t.colour == name]
        members.sort(
            key=lambda t: (
                t.orientation is None,
                round(t.orientation or 0.0, 0),
                t.frequency,
                -t.energy,
            )
        )
        if members:
            groups[name] = [t.index for t in members]
    return groups
