"""Conv filters as images: which weights to show, how they become tiles, and the grid view."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from convscope.errors import InvalidParameterError, NotAConvLayerError
from convscope.render import encode, grid
from convscope.render.grid import symmetric_unit
from convscope.render.legend import Scale
from convscope.services.inspection.channels import parse_channels
from convscope.services.inspection.drawing import (
    GridBounds,
    check_colormap,
    colour_grid,
    layout_dict,
    shape_header,
    summary,
)
from convscope.services.models.registry import LoadedModel
from convscope.services.rendered import JSON, NPY, PNG, Rendered

Reduce = Literal["mean", "abs_max", "l2"]


@dataclass(frozen=True)
class FilterView:
    """How to draw a conv layer's filters."""

    # None: per filter, except where that hides the values: 1x1 kernels (one pixel per tile,
    # so per-tile scaling leaves only the sign) and reductions over input channels.
    normalize: Literal["filter", "layer"] | None = None
    input_channel: int | None = None
    reduce: Reduce = "mean"
    rgb: bool | None = None  # None: colour when the filters see 3 input channels
    filter: int | None = None  # draw this one filter, one tile per input channel


def conv_weight(model: LoadedModel, layer: str) -> tuple[nn.Conv2d, torch.Tensor]:
    """The layer's weights, float32 ``Tensor[O, I / groups, kH, kW]`` (a copy, on the CPU)."""
    module = model.submodule(layer)
    if not isinstance(module, nn.Conv2d):
        raise NotAConvLayerError(model.name, layer, type(module).__name__)
    return module, module.weight.detach().to("cpu", torch.float32, copy=True)


def filter_values(weight: torch.Tensor, view: FilterView) -> tuple[torch.Tensor, str]:
    """Weights ``Tensor[O, I, kH, kW]`` -> the values drawn, ``Tensor[O, 1 or 3, kH, kW]``.

    Three input channels are drawn as RGB; otherwise one input channel is picked or the
    input channels are reduced (mean keeps sign; ``abs_max`` keeps the signed value of
    largest magnitude; ``l2`` is unsigned). Returns the values and a word for what they show.
    """
    in_channels = weight.shape[1]
    rgb = view.rgb if view.rgb is not None else (in_channels == 3 and view.input_channel is None)
    if rgb:
        if in_channels != 3:
            raise InvalidParameterError(
                "rgb",
                f"colour tiles need 3 input channels per filter, this layer has {in_channels}",
            )
        return weight, "rgb"
    if view.input_channel is not None:
        if not 0 <= view.input_channel < in_channels:
            raise InvalidParameterError(
                "input_channel",
                f"expected 0 <= input_channel < {in_channels} (input channels per filter), "
                f"got {view.input_channel}",
            )
        picked = weight[:, view.input_channel : view.input_channel + 1]
        return picked, f"input_channel {view.input_channel}"
    if in_channels == 1:
        return weight, "depthwise"
    if view.reduce == "mean":
        return weight.mean(1, keepdim=True), "mean"
    if view.reduce == "abs_max":
        idx = weight.abs().argmax(1, keepdim=True)
        return weight.gather(1, idx), "abs_max"
    return weight.square().sum(1, keepdim=True).sqrt(), "l2"


def effective_normalize(view: FilterView, values: torch.Tensor, mode: str) -> str:
    """``view.normalize``, resolved: a one-pixel tile is always scaled with the layer (per
    tile it would show only its sign, or one flat colour); reductions default to the layer."""
    if values.shape[-1] * values.shape[-2] == 1:
        return "layer"
    if view.normalize is not None:
        return view.normalize
    return "layer" if mode in ("mean", "abs_max", "l2") else "filter"


def default_colormap(mode: str, values: torch.Tensor) -> str:
    """Diverging (zero in the middle) for signed values scaled layer-wide, ``viridis`` for
    the unsigned ``l2`` norm, grey otherwise."""
    if mode == "l2":
        return "viridis"
    if values.shape[-1] * values.shape[-2] == 1 or mode in ("mean", "abs_max"):
        return "coolwarm"
    return "gray"


def to_tiles(values: torch.Tensor, mode: str, normalize: str) -> tuple[torch.Tensor, Scale]:
    """Values ``Tensor[O, 1 or 3, kH, kW]`` -> tiles in [0, 1] and the value range drawn.

    Signed values: zero at 0.5 (mid-grey), ``[-peak, peak]`` per filter or for the layer.
    ``l2`` (unsigned): ``[0, peak]``. The scale's colormap is filled in by the caller.
    """
    per = "filter" if normalize == "filter" else "layer"
    if mode == "l2":
        peak = values.amax() if per == "layer" else values.flatten(1).amax(1).view(-1, 1, 1, 1)
        tiles = (values / peak.clamp_min(1e-12)).clamp_(0, 1)
        highs = peak.flatten().tolist()
        return tiles, Scale.per_tile(per, "", [0.0] * len(highs), highs)  # type: ignore[arg-type]
    tiles = symmetric_unit(values, per)  # type: ignore[arg-type]
    peaks = (
        values.abs().amax().clamp_min(1e-12).view(1)
        if per == "layer"
        else values.abs().flatten(1).amax(1).clamp_min(1e-12)
    ).tolist()
    return tiles, Scale.per_tile(per, "", [-p for p in peaks], peaks)  # type: ignore[arg-type]


def filter_tiles(weight: torch.Tensor, view: FilterView) -> tuple[torch.Tensor, str]:
    """Weights ``Tensor[O, I, kH, kW]`` -> tiles ``Tensor[O, 1 or 3, kH, kW]`` in [0, 1].

    Zero weight is mid-grey (0.5); ``l2`` is unsigned and drawn from black. Returns the tiles
    and a word for what they show (see :func:`filter_values`, :func:`effective_normalize`).
    """
    values, mode = filter_values(weight, view)
    tiles, _ = to_tiles(values, mode, effective_normalize(view, values, mode))
    return tiles, mode


def auto_scale(kernel: int, target: int = 32, max_scale: int = 32) -> int:
    """Integer nearest-neighbour upscaling so a ``kernel``-pixel tile is ~``target`` pixels."""
    return max(1, min(max_scale, math.ceil(target / max(kernel, 1))))


@dataclass(frozen=True)
class FilterGrid:
    """How the grid of filters is drawn: which ones, colours, scale, spacing."""

    scale: int | None = None
    channels: str | None = None
    colormap: str | None = None  # None: see ``default_colormap``
    padding: int = 1
    values: bool = True  # JSON: include the weights (False: layout and stats only)
    background: int = 255  # grey level (0-255) of the padding between tiles


def render_filters(
    model: LoadedModel,
    layer: str,
    fmt: Literal["png", "json", "npy"],
    view: FilterView,
    drawn_as: FilterGrid,
    bounds: GridBounds,
) -> Rendered:
    """A conv layer's filters as a PNG grid, JSON (values and stats) or NPY (exact)."""
    conv, weight = conv_weight(model, layer)
    if fmt == "npy":
        return Rendered(encode.npy(weight), NPY, {"X-Convscope-Shape": shape_header(weight)})
    if drawn_as.colormap is not None:
        check_colormap(drawn_as.colormap)
    if view.filter is not None:
        # One filter, one tile per input channel: what this output channel looks for.
        if not 0 <= view.filter < weight.shape[0]:
            raise InvalidParameterError(
                "filter",
                f"expected 0 <= filter < {weight.shape[0]} (out_channels), got {view.filter}",
            )
        weight = weight[view.filter].unsqueeze(1)  # [I, 1, kH, kW]
        view = FilterView(normalize=view.normalize, rgb=False)
    picked = parse_channels(drawn_as.channels, weight.shape[0])
    selected = weight if picked is None else weight[picked]
    values, mode = filter_values(selected, view)
    normalize = effective_normalize(view, values, mode)
    tiles, legend = to_tiles(values, mode, normalize)
    cmap = "rgb" if mode == "rgb" else drawn_as.colormap or default_colormap(mode, values)
    legend = Scale(legend.mode, cmap, legend.low, legend.high)
    scale = drawn_as.scale or auto_scale(max(weight.shape[-2:]), max_scale=bounds.max_scale)
    bounds.check_scale(scale)
    indices = picked if picked is not None else list(range(weight.shape[0]))
    padding, background = drawn_as.padding, drawn_as.background
    bounds.check_grid(len(indices), tiles.shape[-2], tiles.shape[-1], scale, padding)
    if tiles.shape[1] == 3:
        image, layout = grid.tile(
            torch.from_numpy(encode.to_uint8(tiles)),
            scale=scale,
            padding=padding,
            pad_value=background,
        )
        drawn = encode.png(grid.to_pixels(image).numpy())
    else:
        drawn, layout = colour_grid(tiles[:, 0], cmap, scale, padding, background)
    headers = {
        "X-Convscope-Grid": layout.header(),
        "X-Convscope-Channels": ",".join(map(str, indices)),
        "X-Convscope-Mode": mode,
        "X-Convscope-Normalize": normalize,
        **legend.headers(),
    }
    if fmt == "png":
        return Rendered(drawn, PNG, headers)
    if drawn_as.values:
        bounds.check_json_floats(selected.numel(), "JSON")
    flat = weight.flatten(1)
    payload: dict[str, Any] = {
        "model": model.name,
        "layer": layer,
        "shape": list(weight.shape),
        "groups": conv.groups,
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "mode": mode,
        "normalize": normalize,
        "colormap": cmap if mode != "rgb" else None,
        "scale": legend.as_dict(),
        "channels": indices,
        "layout": layout_dict(layout),
        "stats": {
            "min": float(flat.min()),
            "max": float(flat.max()),
            "mean": float(flat.mean()),
            "std": float(flat.std(unbiased=False)),
        },
        "filter_stats": summary(flat),
    }
    if drawn_as.values:
        payload["values"] = selected.numpy()
        payload["drawn"] = values.contiguous().numpy()  # what the tiles show (picked, reduced)
    return Rendered(encode.json(payload), JSON, headers)
