"""Conv filters as images: which weights to show, and how they become tiles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from convscope.errors import InvalidParameterError, NotAConvLayerError
from convscope.render.grid import symmetric_unit
from convscope.services.registry import LoadedModel

Reduce = Literal["mean", "abs_max", "l2"]
REDUCTIONS: tuple[str, ...] = ("mean", "abs_max", "l2")


@dataclass(frozen=True)
class FilterView:
    """How to draw a conv layer's filters."""

    normalize: Literal["filter", "layer"] = "filter"
    input_channel: int | None = None
    reduce: Reduce = "mean"
    rgb: bool | None = None  # None: colour when the filters see 3 input channels
    slices_of: int | None = None  # draw this one filter, one tile per input channel


def conv_weight(model: LoadedModel, layer: str) -> tuple[nn.Conv2d, torch.Tensor]:
    """The layer's weights, float32 ``Tensor[O, I / groups, kH, kW]`` (a copy, on the CPU)."""
    module = model.submodule(layer)
    if not isinstance(module, nn.Conv2d):
        raise NotAConvLayerError(model.name, layer, type(module).__name__)
    return module, module.weight.detach().to("cpu", torch.float32, copy=True)


def filter_tiles(weight: torch.Tensor, view: FilterView) -> tuple[torch.Tensor, str]:
    """Weights ``Tensor[O, I, kH, kW]`` -> tiles ``Tensor[O, 1 or 3, kH, kW]`` in [0, 1].

    Zero weight is mid-grey (0.5). Three input channels are drawn as RGB; otherwise one input
    channel is picked or the input channels are reduced (mean keeps sign; ``abs_max`` keeps
    the signed value of largest magnitude; ``l2`` is unsigned and drawn from black).
    Returns the tiles and a word for what they show.
    """
    in_channels = weight.shape[1]
    rgb = view.rgb if view.rgb is not None else (in_channels == 3 and view.input_channel is None)
    if rgb:
        if in_channels != 3:
            raise InvalidParameterError(
                "rgb",
                f"colour tiles need 3 input channels per filter, this layer has {in_channels}",
            )
        return symmetric_unit(weight, view.normalize), "rgb"
    if view.input_channel is not None:
        if not 0 <= view.input_channel < in_channels:
            raise InvalidParameterError(
                "input_channel",
                f"expected 0 <= input_channel < {in_channels} (input channels per filter), "
                f"got {view.input_channel}",
            )
        picked = weight[:, view.input_channel : view.input_channel + 1]
        return symmetric_unit(picked, view.normalize), f"input_channel {view.input_channel}"
    if in_channels == 1:
        return symmetric_unit(weight, view.normalize), "depthwise"
    if view.reduce == "mean":
        return symmetric_unit(weight.mean(1, keepdim=True), view.normalize), "mean"
    if view.reduce == "abs_max":
        idx = weight.abs().argmax(1, keepdim=True)
        return symmetric_unit(weight.gather(1, idx), view.normalize), "abs_max"
    norm = weight.square().sum(1, keepdim=True).sqrt()
    peak = norm.amax() if view.normalize == "layer" else norm.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (norm / peak.clamp_min(1e-12)).clamp_(0, 1), "l2"


def auto_scale(kernel: int, target: int = 32, max_scale: int = 32) -> int:
    """Integer nearest-neighbour upscaling so a ``kernel``-pixel tile is ~``target`` pixels."""
    return max(1, min(max_scale, math.ceil(target / max(kernel, 1))))
