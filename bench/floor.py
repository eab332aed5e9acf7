"""In-process references, written without convscope's services: what the HTTP path competes with.

The floor for one activation grid is a plain forward pass, then the same picture convscope
draws (per-channel min-max, viridis, nearest upscaling, ``make_grid``, PNG). Preprocessing
(decode, resize) is left out of the floor, so it counts as overhead for the service.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from convscope.services.models.sources import embedded_spec

PngEncoder = Callable[[np.ndarray], bytes]
# convscope quantises a colour grid to 255 levels (its PNG palette keeps one entry for the
# padding): the floor draws the same colours, in RGB, as a user's own code would.
_VIRIDIS = np.rint(matplotlib.colormaps["viridis"](np.linspace(0, 1, 255))[:, :3] * 255).astype(
    np.uint8
)


def pillow_png(pixels: np.ndarray) -> bytes:
    """The usual in-process PNG: Pillow at zlib level 1 (its fastest compressing level)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class Reference:
    """The default model, loaded in this process, and ways to draw its maps."""

    model: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]

    @classmethod
    def load(cls) -> Reference:
        spec = embedded_spec()
        model = spec.build().eval().requires_grad_(False)
        return cls(model, spec.preprocessing)

    def input(self, data: bytes) -> torch.Tensor:
        return self.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))

    def forward(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """One forward pass; the output of ``layer`` as ``Tensor[C, H, W]``."""
        seen: list[torch.Tensor] = []
        handle = self.model.get_submodule(layer).register_forward_hook(
            lambda _m, _i, out: seen.append(out)
        )
        try:
            with torch.inference_mode():
                self.model(x[None])
        finally:
            handle.remove()
        return seen[0][0]


def grid_png(maps: torch.Tensor, encode: PngEncoder = pillow_png, padding: int = 2) -> bytes:
    """``Tensor[C, H, W]`` -> the PNG convscope serves by default, drawn with make_grid."""
    with torch.inference_mode():
        flat = maps.flatten(1)
        lo = flat.amin(1).view(-1, 1, 1)
        span = flat.amax(1).view(-1, 1, 1) - lo
        unit = torch.where(span > 1e-12, (maps - lo) / span.clamp_min(1e-12), 0.0)
        grey = unit.mul(254).add_(0.5).clamp_(0, 254).to(torch.uint8).numpy()
        rgb = torch.from_numpy(_VIRIDIS[grey]).permute(0, 3, 1, 2)  # [N, 3, H, W]
        h, w = maps.shape[-2:]
        scale = max(1, 56 // max(h, w))
        rgb = rgb.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        count = maps.shape[0]
        ncol = max(1, min(count, math.ceil(math.sqrt(count * 4 / 3 * h / w))))
        grid = make_grid(rgb, nrow=ncol, padding=padding, pad_value=255)
        return encode(np.ascontiguousarray(grid.permute(1, 2, 0).numpy()))


def matplotlib_png(maps: torch.Tensor) -> bytes:
    """The same maps the way a notebook draws them: a subplots grid, imshow, savefig (Agg)."""
    count, h, w = maps.shape
    ncol = max(1, min(count, math.ceil(math.sqrt(count * 4 / 3 * h / w))))
    nrow = math.ceil(count / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 0.6, nrow * 0.6), squeeze=False)
    try:
        values = maps.numpy()
        for i, ax in enumerate(axes.flat):
            if i < count:
                ax.imshow(values[i], cmap="viridis")
            ax.axis("off")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()
