"""What a colour means in numbers: the value range each drawn tile (or the layer) spans.

A :class:`Scale` travels with every colour-mapped PNG (as headers) and JSON (as a ``scale``
object), so a legend can print "this blue is -0.42". Pure: lists of floats in, text out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ScaleMode = Literal["layer", "channel", "filter", "map"]


def _num(value: float) -> str:
    return f"{value:.7g}"


@dataclass(frozen=True)
class Scale:
    """The values at the two ends of ``colormap``.

    ``mode``: ``layer`` (one range for every tile), ``channel`` / ``filter`` (one range per
    tile, in grid order), or ``map`` (one picture, e.g. a CAM or saliency map). ``low`` and
    ``high`` have one entry per range; a value ``v`` is drawn at colormap position
    ``(v - low) / (high - low)``, clipped to [0, 1].
    """

    mode: ScaleMode
    colormap: str
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def one(cls, mode: ScaleMode, colormap: str, low: float, high: float) -> Scale:
        return cls(mode, colormap, (float(low),), (float(high),))

    @classmethod
    def per_tile(cls, mode: ScaleMode, colormap: str, low: list[float], high: list[float]) -> Scale:
        if len(low) != len(high):
            raise ValueError(f"expected as many lows as highs, got {len(low)} and {len(high)}")
        return cls(mode, colormap, tuple(map(float, low)), tuple(map(float, high)))

    def header(self) -> str:
        """``low,high`` per range, ranges separated by ``;`` (7 significant digits)."""
        pairs = zip(self.low, self.high, strict=True)
        return ";".join(f"{_num(lo)},{_num(hi)}" for lo, hi in pairs)

    def headers(self) -> dict[str, str]:
        return {
            "X-Convscope-Scale": self.header(),
            "X-Convscope-Scale-Mode": self.mode,
            "X-Convscope-Colormap": self.colormap,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``low``/``high`` are numbers for one range, lists for one per tile."""
        single = self.mode in ("layer", "map")
        return {
            "mode": self.mode,
            "colormap": self.colormap,
            "low": self.low[0] if single else list(self.low),
            "high": self.high[0] if single else list(self.high),
        }


HEADERS: tuple[str, ...] = ("X-Convscope-Scale", "X-Convscope-Scale-Mode", "X-Convscope-Colormap")
"""The response headers a :class:`Scale` sets (for CORS ``expose_headers``)."""
