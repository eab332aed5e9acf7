"""Composition: capture, then render. The one service object the API (or the CLI) calls.

``Convscope`` owns the registry, the image store, the caches and the compute gate. It is a
plain class with no module-level state, so a serving framework can wrap it as a replica.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from convscope.config import Settings
from convscope.errors import (
    InvalidParameterError,
    NoActivationError,
    ResponseTooLargeError,
)
from convscope.render import colormap, encode, grid
from convscope.services.cache import ByteLRU
from convscope.services.capture import Capture, capture
from convscope.services.explain import Explainer
from convscope.services.filters import FilterView, auto_scale, conv_weight, filter_tiles
from convscope.services.gate import ComputeGate
from convscope.services.images import ImageRecord, ImageStore
from convscope.services.output import JSON, NPY, PNG, Rendered
from convscope.services.registry import LoadedModel, ModelRegistry
from convscope.services.runtime import configure_threads, freeze_heap, tune_allocator
from convscope.services.selection import parse_channels

log = logging.getLogger(__name__)

Format = Literal["png", "json", "npy"]


@dataclass(frozen=True)
class MapView:
    """How to draw a layer's feature maps."""

    channels: str | None = None
    order: Literal["index", "mean"] = "index"
    colormap: str = "viridis"
    normalize: Literal["channel", "layer"] = "channel"
    scale: int | None = None
    padding: int = 2
    limit: int | None = None
    dtype: Literal["uint8", "float32"] = "uint8"
    background: int = 255  # grey level of the padding between tiles


def _check_colormap(name: str) -> None:
    if name not in colormap.COLORMAPS:
        raise InvalidParameterError(
            "colormap", f"expected one of {', '.join(colormap.COLORMAPS)}, got {name!r}"
        )


def _stats(maps: torch.Tensor) -> dict[str, list[float]]:
    flat = maps.flatten(1)
    return {
        "min": flat.amin(1).tolist(),
        "max": flat.amax(1).tolist(),
        "mean": flat.mean(1).tolist(),
        "std": flat.std(1, unbiased=False).tolist(),
    }


class Convscope:
    """The service: models, images, and every view of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        tune_allocator(arenas=configure_threads(settings.torch_threads))
        self.registry = ModelRegistry(settings)
        self.images = ImageStore(
            settings.data_dir,
            max_images=settings.max_images,
            max_bytes=settings.max_image_store_bytes,
            max_pixels=settings.max_image_pixels,
        )
        self.captures: ByteLRU[Capture] = ByteLRU(
            settings.activation_cache_bytes, lambda c: c.nbytes
        )
        self.rendered: ByteLRU[Rendered] = ByteLRU(settings.render_cache_bytes, lambda r: r.nbytes)
        self.gate = ComputeGate(settings.max_concurrent_compute, settings.max_queue)
        self.explain = Explainer(settings, self.registry, self.images, self.gate)

    # --- models and layers ------------------------------------------------------------

    def load_default(self) -> LoadedModel:
        """Load the default model and the preloads, then settle the process for serving."""
        try:
            model = self.registry.get(self.settings.default_model)
            for name in self.settings.preload:
                try:
                    self.registry.get(name)
                except Exception as exc:
                    log.warning("preloading %s failed: %s", name, exc)
            for name in colormap.COLORMAPS:  # imports matplotlib now, not in the first request
                colormap.lookup_table(name, colormap.levels(name))
        finally:  # loaded or not: what is loaded now is frozen and the collector runs again
            freeze_heap()
        return model

    def models(self) -> list[dict[str, Any]]:
        return self.registry.describe()

    def model(self, name: str) -> LoadedModel:
        return self.registry.get(name)

    def layers(self, model: str) -> list[dict[str, Any]]:
        return [info.as_dict() for info in self.model(model).layers]

    # --- filters ------------------------------------------------------------------------

    def filters(
        self,
        model_name: str,
        layer: str,
        fmt: Format,
        view: FilterView,
        *,
        scale: int | None = None,
        channels: str | None = None,
        colormap_name: str = "gray",
        padding: int = 1,
        values: bool = True,
        background: int = 255,
    ) -> Rendered:
        """A conv layer's filters as a PNG grid, JSON (values and stats) or NPY (exact).

        ``values=False`` leaves the weights out of the JSON (layout and stats only);
        ``background`` is the grey level (0-255) of the padding between tiles.
        """
        model = self.model(model_name)
        conv, weight = conv_weight(model, layer)
        if fmt == "npy":
            return Rendered(encode.npy(weight), NPY, {"X-Convscope-Shape": _shape(weight)})
        _check_colormap(colormap_name)
        if view.slices_of is not None:
            # One filter, one tile per input channel: what this output channel looks for.
            if not 0 <= view.slices_of < weight.shape[0]:
                raise InvalidParameterError(
                    "filter",
                    f"expected 0 <= filter < {weight.shape[0]} (out_channels), "
                    f"got {view.slices_of}",
                )
            weight = weight[view.slices_of].unsqueeze(1)  # [I, 1, kH, kW]
            view = FilterView(normalize=view.normalize, rgb=False)
        picked = parse_channels(channels, weight.shape[0])
        selected = weight if picked is None else weight[picked]
        tiles, mode = filter_tiles(selected, view)
        kernel = max(weight.shape[-2:])
        scale = scale or auto_scale(kernel, max_scale=self.settings.max_scale)
        self._check_scale(scale)
        indices = picked if picked is not None else list(range(weight.shape[0]))
        self._check_grid(len(indices), tiles.shape[-2], tiles.shape[-1], scale, padding)
        if tiles.shape[1] == 3:
            image, layout = grid.tile(
                torch.from_numpy(encode.to_uint8(tiles)),
                scale=scale,
                padding=padding,
                pad_value=background,
            )
            drawn = encode.png(grid.to_pixels(image).numpy())
        else:
            drawn, layout = _colour_grid(tiles[:, 0], colormap_name, scale, padding, background)
        headers = {
            "X-Convscope-Grid": layout.header(),
            "X-Convscope-Channels": ",".join(map(str, indices)),
            "X-Convscope-Mode": mode,
        }
        if fmt == "png":
            return Rendered(drawn, PNG, headers)
        numel = selected.numel()
        if values and numel > self.settings.max_json_floats:
            raise ResponseTooLargeError(
                f"JSON would hold {numel} floats, above the limit of "
                f"{self.settings.max_json_floats}; use format=npy (or pick fewer channels)"
            )
        flat = weight.flatten(1)
        payload = {
            "model": model_name,
            "layer": layer,
            "shape": list(weight.shape),
            "groups": conv.groups,
            "in_channels": conv.in_channels,
            "out_channels": conv.out_channels,
            "mode": mode,
            "normalize": view.normalize,
            "colormap": colormap_name if mode != "rgb" else None,
            "channels": indices,
            "layout": _layout_dict(layout),
            "stats": {
                "min": float(flat.min()),
                "max": float(flat.max()),
                "mean": float(flat.mean()),
                "std": float(flat.std(unbiased=False)),
            },
            "filter_stats": _stats(weight.flatten(1).unsqueeze(-1)),
        }
        if values:
            payload["values"] = selected.numpy()
        return Rendered(encode.json(payload), JSON, headers)

    # --- images -------------------------------------------------------------------------

    def put_image(self, data: bytes, name: str | None) -> tuple[ImageRecord, bool]:
        return self.images.put(data, name)

    def list_images(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.images.list()]

    def image(self, image_id: str) -> tuple[ImageRecord, bytes]:
        return self.images.data(image_id)

    def image_record(self, image_id: str) -> dict[str, Any]:
        return self.images.record(image_id).as_dict()

    def input_view(self, model_name: str, image_id: str, fmt: Literal["png", "npy"]) -> Rendered:
        """What the network sees: PNG of the resized, cropped image, or NPY of the input tensor."""
        model = self.model(model_name)
        _, image = self.images.open(image_id)
        view = model.spec.preprocessing.view(image)
        if fmt == "npy":
            x = model.spec.preprocessing.normalize(view)
            return Rendered(encode.npy(x), NPY, {"X-Convscope-Shape": _shape(x)})
        return Rendered(encode.png(encode.to_uint8(view).transpose(1, 2, 0)), PNG)

    # --- activations --------------------------------------------------------------------

    def capture(self, model: LoadedModel, image_id: str) -> Capture:
        """All layers' outputs for one image: one forward pass, then cached by bytes."""
        key = (model.name, model.spec.weights, image_id)

        def compute() -> Capture:
            _, image = self.images.open(image_id)
            x = model.spec.preprocessing(image)
            with self.gate.slot():
                return capture(model, x)

        return self.captures.get_or_compute(key, compute)

    def _capture_bytes(self, model: LoadedModel, data: bytes) -> Capture:
        from convscope.services.images import decode

        image, _ = decode(data, max_pixels=self.settings.max_image_pixels)
        x = model.spec.preprocessing(image)
        with self.gate.slot():
            return capture(model, x)

    def feature_maps(self, model: LoadedModel, cap: Capture, layer: str) -> torch.Tensor:
        """Layer output as ``Tensor[C, H, W]`` (flat outputs ``[F]`` become ``[F, 1, 1]``)."""
        info = model.layer(layer)
        maps = cap.maps.get(layer)
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

    def activations(
        self, model_name: str, image_id: str, layer: str, fmt: Format, view: MapView
    ) -> Rendered:
        """Feature maps of ``layer`` for an image, as a PNG grid, JSON or NPY ``[C, H, W]``."""
        model = self.model(model_name)
        model.layer(layer)
        self.images.record(image_id)
        key = ("act", model.name, model.spec.weights, image_id, layer, fmt, view)
        cached = self.rendered.get(key)
        if cached is not None:
            return cached
        maps = self.feature_maps(model, self.capture(model, image_id), layer)
        out = self.render_maps(maps, layer, fmt, view)
        self.rendered.put(key, out)
        return out

    def activations_once(
        self, model_name: str, data: bytes, layer: str, fmt: Format, view: MapView
    ) -> Rendered:
        """One-shot: image bytes in, rendered maps out; nothing is stored."""
        model = self.model(model_name)
        model.layer(layer)
        cap = self._capture_bytes(model, data)
        return self.render_maps(self.feature_maps(model, cap, layer), layer, fmt, view)

    def render_maps(self, maps: torch.Tensor, layer: str, fmt: Format, view: MapView) -> Rendered:
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
            headers["X-Convscope-Shape"] = _shape(selected)
            return Rendered(encode.npy(selected), NPY, headers)
        if fmt == "json":
            return Rendered(
                encode.json(self._maps_json(layer, maps, selected, indices, view)), JSON, headers
            )
        _check_colormap(view.colormap)
        h, w = selected.shape[-2:]
        scale = view.scale or max(1, min(self.settings.max_scale, 56 // max(h, w)))
        self._check_scale(scale)
        self._check_grid(len(indices), h, w, scale, view.padding)
        unit = grid.to_unit(selected, view.normalize)
        drawn, layout = _colour_grid(unit, view.colormap, scale, view.padding, view.background)
        headers["X-Convscope-Grid"] = layout.header()
        return Rendered(drawn, PNG, headers)

    def _maps_json(
        self,
        layer: str,
        maps: torch.Tensor,
        selected: torch.Tensor,
        indices: list[int],
        view: MapView,
    ) -> dict[str, Any]:
        stats = _stats(selected)
        channels: list[dict[str, Any]] = []
        if view.dtype == "float32":
            if selected.numel() > self.settings.max_json_floats:
                raise ResponseTooLargeError(
                    f"float JSON would hold {selected.numel()} values, above the limit of "
                    f"{self.settings.max_json_floats}; use format=npy, dtype=uint8, or fewer "
                    "channels"
                )
            data: list[Any] = [m.numpy() for m in selected]
        else:
            quantised = encode.to_uint8(grid.to_unit(selected, "channel"))
            data = [encode.b64(q) for q in quantised]
        for i, index in enumerate(indices):
            channels.append(
                {
                    "index": index,
                    "min": stats["min"][i],
                    "max": stats["max"][i],
                    "mean": stats["mean"][i],
                    "std": stats["std"][i],
                    "data": data[i],
                }
            )
        return {
            "layer": layer,
            "shape": list(maps.shape),
            "encoding": "float32" if view.dtype == "float32" else "base64-uint8",
            "channels": channels,
        }

    def channel_stats(self, model_name: str, image_id: str, layer: str, top: int) -> dict[str, Any]:
        """Per-channel min/max/mean/std of a layer, and the ``top`` channels by mean."""
        model = self.model(model_name)
        model.layer(layer)
        self.images.record(image_id)
        maps = self.feature_maps(model, self.capture(model, image_id), layer)
        stats = _stats(maps)
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

    def predictions(self, model_name: str, image_id: str, top: int) -> list[dict[str, Any]]:
        """Top-``top`` classes: ``[{index, label, probability}]``."""
        model = self.model(model_name)
        self.images.record(image_id)
        return _top_classes(model, self.capture(model, image_id).logits, top)

    # --- helpers --------------------------------------------------------------------------

    def _check_scale(self, scale: int) -> None:
        if not 1 <= scale <= self.settings.max_scale:
            raise InvalidParameterError(
                "scale", f"expected 1 <= scale <= {self.settings.max_scale}, got {scale}"
            )

    def _check_grid(self, count: int, h: int, w: int, scale: int, padding: int) -> None:
        ncol = grid.default_nrow(count, h, w)
        nrow = -(-count // ncol)
        pixels = (nrow * (h * scale + padding) + padding) * (ncol * (w * scale + padding) + padding)
        if pixels > self.settings.max_grid_pixels:
            raise ResponseTooLargeError(
                f"the grid would be {pixels} pixels, above the limit of "
                f"{self.settings.max_grid_pixels}; lower scale, pick fewer channels, or use "
                "format=npy"
            )


def _colour_grid(
    unit: torch.Tensor, name: str, scale: int, padding: int, background: int
) -> tuple[bytes, grid.GridLayout]:
    """Maps in [0, 1] (``Tensor[N, H, W]``) as one PNG grid in colormap ``name``.

    Drawn as indices into the colormap (an indexed PNG, or greyscale for ``gray``), so tiling
    and compression handle one byte per pixel instead of three.
    """
    levels = encode.to_uint8(unit, colormap.levels(name))
    image, layout = grid.tile(
        torch.from_numpy(levels).unsqueeze(1),
        scale=scale,
        padding=padding,
        pad_value=colormap.pad_index(name, background),
    )
    pixels = grid.to_pixels(image).numpy()
    return encode.png(pixels, palette=colormap.palette(name, background)), layout


def _top_classes(model: LoadedModel, logits: torch.Tensor, top: int) -> list[dict[str, Any]]:
    probabilities = logits.softmax(-1)
    k = min(top, probabilities.numel())
    values, indices = probabilities.topk(k)
    names = model.spec.categories
    return [
        {
            "index": int(i),
            "label": names[i] if i < len(names) else str(int(i)),
            "probability": float(p),
        }
        for p, i in zip(values, indices, strict=True)
    ]


def _shape(t: torch.Tensor | np.ndarray) -> str:
    return ",".join(str(s) for s in t.shape)


def _layout_dict(layout: grid.GridLayout) -> dict[str, int]:
    return {
        "count": layout.count,
        "nrow": layout.nrow,
        "ncol": layout.ncol,
        "tile_height": layout.tile_height,
        "tile_width": layout.tile_width,
        "padding": layout.padding,
        "scale": layout.scale,
    }


ProgressFn = Callable[[int, int], None]
