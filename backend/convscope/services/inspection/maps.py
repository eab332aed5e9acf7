"""Feature maps: a layer's output for one image, and how it is drawn (PNG grid, JSON, NPY)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from convscope.errors import NoActivationError, ResponseTooLargeError
from convscope.render import encode, grid
from convscope.render.legend import Scale
from convscope.services.inspection.capture import Capture
from convscope.services.inspection.channels import parse_channels
from convscope.services.inspection.drawing import (
    GridBounds,
    check_colormap,
    colour_grid,
    shape_header,
    summary,
)
from convscope.services.models.registry import LoadedModel
from convscope.services.rendered import JSON, NPY, PNG, Rendered

Format = Literal["png", "json", "npy"]


@dataclass(frozen=True)
class MapView:
    """How to draw a layer's feature maps."""

    channels: str | None = None
    order: Literal["index", "mean"] = "index"
    colormap: str = "viridis"
    normalize: Literal["channel", "layer"] = "channel"  # display scaling to [0, 1]
    scale: int | None = None
    padding: int = 2
    limit: int | None = None
    dtype: Literal["uint8", "float32"] = "uint8"
    background: int = 255  # grey level of the padding between tiles


def feature_maps(model: LoadedModel, cap: Capture, layer: str) -> torch.Tensor:
    """Layer output as ``Tensor[C, H, W]`` (flat outputs ``[F]`` become ``[F, 1, 1]``)."""
    return as_feature_maps(model, layer, cap.maps.get(layer))


def as_feature_maps(model: LoadedModel, layer: str, maps: torch.Tensor | None) -> torch.Tensor:
    """One image's output of ``layer`` (None: none was kept) as ``Tensor[C, H, W]``."""
    info = model.layer(layer)
    if maps is None:
        why = (
            "it is not called in the forward pass"
            if info.calls == 0
            else "its output is not a tensor of shape [N, C, H, W] or [N, F]"
        )
        raise NoActivationError(model.name, layer, why)
    if maps.dim() == 1:
        return maps.view(-1, 1, 1)
    if maps.dim() != 3:
        return (
            maps.reshape(maps.shape[0], -1, maps.shape[-1])
            if maps.dim() > 3
            else maps.view(maps.shape[0], 1, -1)
        )
    return maps


def render_maps(
    maps: torch.Tensor, layer: str, fmt: Format, view: MapView, bounds: GridBounds
) -> Rendered:
    """``Tensor[C, H, W]`` as a PNG grid, JSON (uint8 base64 or float) or NPY of the selection."""
    count = maps.shape[0]
    picked = parse_channels(view.channels, count)
    indices = list(range(count)) if picked is None else picked
    if view.order == "mean":
        means = maps[indices].flatten(1).mean(1)
        indices = [indices[i] for i in torch.argsort(means, descending=True, stable=True)]
    if view.limit is not None:
        indices = indices[: view.limit]
    selected = maps[indices] if len(indices) != count or indices != list(range(count)) else maps
    headers = {"X-Convscope-Channels": ",".join(map(str, indices))}
    if fmt == "npy":
        headers["X-Convscope-Shape"] = shape_header(selected)
        return Rendered(encode.npy(selected), NPY, headers)
    check_colormap(view.colormap)
    legend = map_scale(selected, view)
    if fmt == "json":
        payload = _maps_json(layer, maps, selected, indices, view, bounds)
        payload["scale"] = legend.as_dict()
        return Rendered(encode.json(payload), JSON, headers)
    h, w = selected.shape[-2:]
    scale = view.scale or max(1, min(bounds.max_scale, 56 // max(h, w)))
    bounds.check_scale(scale)
    bounds.check_grid(len(indices), h, w, scale, view.padding)
    unit = grid.to_unit(selected, view.normalize)
    drawn, layout = colour_grid(unit, view.colormap, scale, view.padding, view.background)
    headers["X-Convscope-Grid"] = layout.header()
    headers.update(legend.headers())
    return Rendered(drawn, PNG, headers)


def map_scale(selected: torch.Tensor, view: MapView) -> Scale:
    """The value range ``grid.to_unit`` maps to the ends of the colormap: per channel (in grid
    order) or one for the layer, for ``Tensor[N, H, W]``."""
    x = selected.to(torch.float32)
    if view.normalize == "layer":
        return Scale.one("layer", view.colormap, float(x.amin()), float(x.amax()))
    flat = x.flatten(1)
    return Scale.per_tile("channel", view.colormap, flat.amin(1).tolist(), flat.amax(1).tolist())


def _maps_json(
    layer: str,
    maps: torch.Tensor,
    selected: torch.Tensor,
    indices: list[int],
    view: MapView,
    bounds: GridBounds,
) -> dict[str, Any]:
    stats = summary(selected)
    if view.dtype == "float32":
        if selected.numel() > bounds.max_json_floats:
            raise ResponseTooLargeError(
                f"float JSON would hold {selected.numel()} values, above the limit of "
                f"{bounds.max_json_floats}; use format=npy, dtype=uint8, or fewer channels"
            )
        data: list[Any] = [m.numpy() for m in selected]
    else:
        quantised = encode.to_uint8(grid.to_unit(selected, "channel"))
        data = [encode.b64(q) for q in quantised]
    channels = [
        {
            "index": index,
            "min": stats["min"][i],
            "max": stats["max"][i],
            "mean": stats["mean"][i],
            "std": stats["std"][i],
            "data": data[i],
        }
        for i, index in enumerate(indices)
    ]
    return {
        "layer": layer,
        "shape": list(maps.shape),
        "encoding": "float32" if view.dtype == "float32" else "base64-uint8",
        "channels": channels,
    }


def channel_stats(maps: torch.Tensor, layer: str, top: int) -> dict[str, Any]:
    """Per-channel min/max/mean/std of ``Tensor[C, H, W]``, and the ``top`` channels by mean."""
    stats = summary(maps)
    means = torch.tensor(stats["mean"])
    order = torch.argsort(means, descending=True, stable=True)[:top].tolist()
    return {
        "layer": layer,
        "shape": list(maps.shape),
        "channels": [
            {"index": i, **{k: v[i] for k, v in stats.items()}} for i in range(maps.shape[0])
        ],
        "top": [{"index": i, "mean": stats["mean"][i]} for i in order],
    }


def top_classes(model: LoadedModel, logits: torch.Tensor, top: int) -> list[dict[str, Any]]:
    """``[{index, label, probability}]`` of the ``top`` most probable classes."""
    probabilities = logits.softmax(-1)
    k = min(top, probabilities.numel())
    values, indices = probabilities.topk(k)
    return [
        {"index": int(i), "label": model.spec.label(int(i)), "probability": float(p)}
        for p, i in zip(values, indices, strict=True)
    ]
