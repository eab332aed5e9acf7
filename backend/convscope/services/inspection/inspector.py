"""Composition for one image at a time: capture, then render (filters, maps, stats, classes).

``Inspector`` owns the two byte-bounded caches: one forward pass per (model, weights, image)
fills ``captures``; rendered grids are kept in ``rendered``. A plain class, no module state.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from convscope.render import encode
from convscope.services.compute.gate import ComputeGate
from convscope.services.inspection.capture import Capture, capture, layer_output
from convscope.services.inspection.drawing import GridBounds, shape_header
from convscope.services.inspection.filters import FilterGrid, FilterView, render_filters
from convscope.services.inspection.maps import (
    Format,
    MapView,
    as_feature_maps,
    channel_stats,
    feature_maps,
    render_maps,
    top_classes,
)
from convscope.services.models.registry import LoadedModel, ModelRegistry
from convscope.services.rendered import NPY, PNG, Rendered
from convscope.services.storage.cache import ByteLRU
from convscope.services.storage.images import ImageStore, decode


class Inspector:
    """Filters, input views, feature maps, channel statistics and predictions."""

    def __init__(
        self,
        registry: ModelRegistry,
        images: ImageStore,
        gate: ComputeGate,
        bounds: GridBounds,
        *,
        capture_bytes: int,
        render_bytes: int,
        max_image_pixels: int,
    ) -> None:
        self.registry = registry
        self.images = images
        self.gate = gate
        self.bounds = bounds
        self.max_image_pixels = max_image_pixels
        self.captures: ByteLRU[Capture] = ByteLRU(capture_bytes, lambda c: c.nbytes)
        self.rendered: ByteLRU[Rendered] = ByteLRU(render_bytes, lambda r: r.nbytes)

    def filters(
        self, model_name: str, layer: str, fmt: Format, view: FilterView, drawn_as: FilterGrid
    ) -> Rendered:
        """A conv layer's filters as a PNG grid, JSON (values and stats) or NPY (exact)."""
        return render_filters(
            self.registry.get(model_name), layer, fmt, view, drawn_as, self.bounds
        )

    def input_view(self, model_name: str, image_id: str, fmt: Literal["png", "npy"]) -> Rendered:
        """What the network sees: PNG of the resized, cropped image, or NPY of the input tensor."""
        model = self.registry.get(model_name)
        _, image = self.images.open(image_id)
        view = model.spec.preprocessing.view(image)
        if fmt == "npy":
            x = model.spec.preprocessing.standardize(view)
            return Rendered(encode.npy(x), NPY, {"X-Convscope-Shape": shape_header(x)})
        return Rendered(encode.png(encode.to_uint8(view).transpose(1, 2, 0)), PNG)

    def capture(self, model: LoadedModel, image_id: str) -> Capture:
        """All layers' outputs for one image: one forward pass, then cached by bytes."""
        key = (model.name, model.spec.weights, image_id)

        def compute() -> Capture:
            _, image = self.images.open(image_id)
            x = model.spec.preprocessing(image)
            with self.gate.slot():
                return capture(model, x)

        return self.captures.get_or_compute(key, compute)

    def maps(self, model: LoadedModel, image_id: str, layer: str) -> torch.Tensor:
        """``layer``'s output for a stored image, ``Tensor[C, H, W]`` (read-only, shared)."""
        return feature_maps(model, self.capture(model, image_id), layer)

    def activations(
        self, model_name: str, image_id: str, layer: str, fmt: Format, view: MapView
    ) -> Rendered:
        """Feature maps of ``layer`` for an image, as a PNG grid, JSON or NPY ``[C, H, W]``."""
        model = self.registry.get(model_name)
        model.layer(layer)
        self.images.record(image_id)
        key = ("act", model.name, model.spec.weights, image_id, layer, fmt, view)
        cached = self.rendered.get(key)
        if cached is not None:
            return cached
        out = render_maps(self.maps(model, image_id, layer), layer, fmt, view, self.bounds)
        self.rendered.put(key, out)
        return out

    def activations_once(
        self, model_name: str, data: bytes, layer: str, fmt: Format, view: MapView
    ) -> Rendered:
        """One-shot: image bytes in, rendered maps out; nothing is stored."""
        model = self.registry.get(model_name)
        model.layer(layer)
        image, _ = decode(data, max_pixels=self.max_image_pixels)
        x = model.spec.preprocessing(image)
        with self.gate.slot():  # only this layer, and nothing after it: see layer_output
            maps = as_feature_maps(model, layer, layer_output(model, x, layer))
        return render_maps(maps, layer, fmt, view, self.bounds)

    def channel_stats(self, model_name: str, image_id: str, layer: str, top: int) -> dict[str, Any]:
        """Per-channel min/max/mean/std of a layer, and the ``top`` channels by mean."""
        model = self.registry.get(model_name)
        model.layer(layer)
        self.images.record(image_id)
        return channel_stats(self.maps(model, image_id, layer), layer, top)

    def predictions(self, model_name: str, image_id: str, top: int) -> list[dict[str, Any]]:
        """Top-``top`` classes: ``[{index, label, probability}]``."""
        model = self.registry.get(model_name)
        self.images.record(image_id)
        return top_classes(model, self.capture(model, image_id).logits, top)
