"""A model's preprocessing: resize, centre crop, scale to [0, 1], normalise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

_INTERPOLATION = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize_size``, crop ``crop_size`` square, normalise."""

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    @classmethod
    def from_torchvision(cls, transforms: Any) -> Preprocessing:
        """Read torchvision's ``ImageClassification`` preset (``weights.transforms()``)."""
        return cls(
            crop_size=int(transforms.crop_size[0]),
            resize_size=int(transforms.resize_size[0]),
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            interpolation=transforms.interpolation.value,
        )

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.crop_size, self.crop_size)

    def view(self, image: Image.Image) -> torch.Tensor:
        """The crop the network sees, unnormalised: ``Tensor[3, S, S]`` float32 in [0, 1]."""
        x = F.pil_to_tensor(image.convert("RGB"))
        x = F.resize(
            x, [self.resize_size], interpolation=_INTERPOLATION[self.interpolation], antialias=True
        )
        x = F.center_crop(x, [self.crop_size, self.crop_size])
        return x.to(torch.float32).div_(255.0)

    def standardize(self, view: torch.Tensor) -> torch.Tensor:
        """``Tensor[3, S, S]`` in [0, 1] -> the network's input ``(x - mean) / std``."""
        return standardize(view[None], self.mean, self.std)[0]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.standardize(self.view(image))

    def as_dict(self) -> dict[str, Any]:
        return {
            "crop_size": self.crop_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


def standardize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """``Tensor[N, 3, H, W]`` in [0, 1] -> the network's input ``(x - mean) / std``.

    Mean/std standardisation; not the display scaling that views call ``normalize``.
    """
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s
