"""Image parametrisations for feature visualisation (Lucid's ``param``): pixels or Fourier.

An :class:`ImageParam` owns one leaf tensor to optimise and maps it to RGB images in [0, 1].
The Fourier one follows Lucid: an ``rfft2`` spectrum scaled by ``1/f`` (``decay_power``),
colours decorrelated with the ImageNet colour-correlation square root, then a sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Parametrization = Literal["fourier", "pixel"]

# Square root of ImageNet's colour covariance (Lucid's ``color_correlation_svd_sqrt``).
_COLOR_CORRELATION_SVD_SQRT = (
    (0.26, 0.09, 0.02),
    (0.27, 0.00, -0.05),
    (0.27, -0.09, 0.03),
)
# Lucid's "magic" constant: dividing the inverse FFT by 4 keeps early images from saturating.
_FFT_MAGIC = 4.0


def _color_matrix() -> torch.Tensor:
    """``Tensor[3, 3]`` float32: the colour-correlation matrix, columns of unit max norm."""
    m = torch.tensor(_COLOR_CORRELATION_SVD_SQRT, dtype=torch.float32)
    return m / m.norm(dim=0).max()


def rfft2_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    """``Tensor[H, W // 2 + 1]`` float32: Lucid's ``1 / max(f, 1 / max(H, W)) ** decay_power``."""
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.rfftfreq(width).view(1, -1)
    freqs = (fx * fx + fy * fy).sqrt()
    return 1.0 / freqs.clamp_min(1.0 / max(height, width)) ** decay_power


@dataclass
class ImageParam:
    """A batch of images as a function of one leaf tensor ``param``.

    Call it to get ``Tensor[N, 3, H, W]`` float32 in [0, 1] (with grad through ``param``).
    """

    param: torch.Tensor
    height: int
    width: int
    kind: Parametrization
    decorrelate: bool
    scale: torch.Tensor | None = None  # Tensor[H, W // 2 + 1] for Fourier
    color: torch.Tensor | None = None  # Tensor[3, 3]

    def __call__(self) -> torch.Tensor:
        if self.scale is not None:  # Fourier
            spectrum = torch.view_as_complex(self.param) * self.scale
            x = torch.fft.irfft2(spectrum, s=(self.height, self.width), norm="ortho") / _FFT_MAGIC
        else:
            x = self.param
        if self.decorrelate and self.color is not None:
            x = torch.einsum("nchw,dc->ndhw", x, self.color)
        return torch.sigmoid(x)


def image_param(
    batch: int,
    size: int | tuple[int, int],
    *,
    generator: torch.Generator,
    kind: Parametrization = "fourier",
    decorrelate: bool = True,
    sd: float = 0.01,
    decay_power: float = 1.0,
    device: torch.device | str = "cpu",
) -> ImageParam:
    """Create ``batch`` random images of ``size`` (int or (H, W)) drawn from ``generator``.

    The leaf is ``Tensor[N, 3, H, W // 2 + 1, 2]`` (real, imaginary) for ``fourier`` and
    ``Tensor[N, 3, H, W]`` for ``pixel``; both start as ``sd`` * standard normal, as in Lucid.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if kind == "fourier":
        shape: tuple[int, ...] = (batch, 3, height, width // 2 + 1, 2)
    else:
        shape = (batch, 3, height, width)
    leaf = torch.randn(shape, generator=generator, dtype=torch.float32) * sd
    leaf = leaf.to(device).requires_grad_(True)
    scale = rfft2_scale(height, width, decay_power).to(device) if kind == "fourier" else None
    color = _color_matrix().to(device) if decorrelate else None
    return ImageParam(leaf, height, width, kind, decorrelate, scale, color)
