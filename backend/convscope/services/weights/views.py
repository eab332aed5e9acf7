"""``WeightViews``: expanded weights, filter analysis and model comparison, rendered.

Resolves models and images, runs the computation under a compute slot, caches what is costly
and turns the result into PNG, JSON or NPY. A plain class with no module state.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from convscope.errors import (
    InvalidParameterError,
    NotAConvLayerError,
    NotOnImageError,
    ResponseTooLargeError,
)
from convscope.render import diverging, encode, grid
from convscope.services.compute.gate import ComputeGate
from convscope.services.models.hooks import HookScope
from convscope.services.models.registry import LoadedModel, ModelRegistry
from convscope.services.rendered import JSON, NPY, PNG, Rendered
from convscope.services.storage.cache import ByteLRU
from convscope.services.storage.images import ImageStore
from convscope.services.weights import analysis, compare
from convscope.services.weights.expanded import INPUT, Expanded, expanded_weights

Format = Literal["png", "json", "npy"]


class _Checked(Exception):
    """Raised by the pre-hook once the layer's input is seen: nothing else needs to run."""


def _auto_scale(size: int, target: int, max_scale: int) -> int:
    return max(1, min(max_scale, math.ceil(target / max(size, 1))))


class WeightViews:
    """Expanded weights, first-layer filter analysis and two-model comparison."""

    def __init__(
        self,
        registry: ModelRegistry,
        images: ImageStore,
        gate: ComputeGate,
        *,
        max_scale: int,
        max_json_floats: int,
        cache_bytes: int,
    ) -> None:
        self.registry = registry
        self.images = images
        self.gate = gate
        self.max_scale = max_scale
        self.max_json_floats = max_json_floats
        self.cache: ByteLRU[Expanded] = ByteLRU(cache_bytes, lambda e: e.nbytes)
        self._traits: ByteLRU[list[analysis.FilterTraits]] = ByteLRU(
            1 << 22, lambda t: 200 * len(t)
        )

    # --- expanded weights -----------------------------------------------------------------

    def expanded_values(self, model_name: str, layer: str, channel: int, onto: str) -> Expanded:
        """Expanded weights of ``layer[channel]`` onto ``onto``, computed once, then cached."""
        model = self.registry.get(model_name)
        shape = model.layer(layer).output_shape
        if shape and not 0 <= channel < shape[0]:  # refused before any forward pass
            raise InvalidParameterError(
                "channel",
                f"expected 0 <= channel < {shape[0]} (channels of {layer!r}), got {channel}",
            )
        if onto != INPUT:
            model.layer(onto)
        key = (model.name, model.spec.weights, layer, channel, onto)

        def compute() -> Expanded:
            x = torch.zeros(1, 3, *model.spec.preprocessing.input_size, device=model.device)
            with self.gate.slot():
                return expanded_weights(model.module, layer, channel, onto, x, model.name)

        return self.cache.get_or_compute(key, compute)

    def expanded(
        self,
        model_name: str,
        layer: str,
        channel: int,
        onto: str,
        fmt: Format,
        *,
        top: int = 16,
        scale: int | None = None,
    ) -> Rendered:
        """NPY float32 ``[C_onto, h, w]`` over the box; JSON with box and norms; PNG tiles.

        PNG: onto the input, one RGB tile (zero weight mid-grey); onto a layer, the ``top``
        input channels by norm as diverging maps (blue negative, white zero, red positive),
        strongest first, their indices in ``X-Convscope-Channels``.
        """
        result = self.expanded_values(model_name, layer, channel, onto)
        top_, left, bottom, right = result.box
        headers = {
            "X-Convscope-Box": f"{top_},{left},{bottom},{right}",
            "X-Convscope-Shape": ",".join(map(str, result.values.shape)),
        }
        if fmt == "npy":
            return Rendered(encode.npy(result.values), NPY, headers)
        norms = result.norms
        if fmt == "json":
            if result.values.numel() > self.max_json_floats:
                raise ResponseTooLargeError(
                    f"the expanded weights hold {result.values.numel()} floats, above the limit "
                    f"of {self.max_json_floats}; use format=npy"
                )
            payload = {
                "model": model_name,
                "layer": layer,
                "channel": channel,
                "onto": onto,
                "shape": list(result.values.shape),
                "onto_shape": list(result.onto_shape),
                "box": list(result.box),
                "position": None if result.position is None else list(result.position),
                "norms": norms.numpy(),
                "values": result.values.numpy(),
            }
            return Rendered(encode.json(payload), JSON, headers)
        h, w = result.values.shape[1:]
        if onto == INPUT and result.values.shape[0] == 3:
            scale = scale or _auto_scale(max(h, w), 160, self.max_scale)
            self._check_scale(scale)
            unit = grid.symmetric_unit(result.values[None], "filter")
            image, layout = grid.tile(torch.from_numpy(encode.to_uint8(unit)), scale=scale)
            headers["X-Convscope-Channels"] = "0,1,2"
        else:
            if top < 1:
                raise InvalidParameterError("top", f"expected top >= 1, got {top}")
            order = torch.argsort(norms, descending=True, stable=True)[:top].tolist()
            scale = scale or _auto_scale(max(h, w), 48, self.max_scale)
            self._check_scale(scale)
            signed = diverging.symmetric_scale(result.values[order].numpy(), per_map=False)
            tiles = torch.from_numpy(diverging.diverging_rgb(signed)).permute(0, 3, 1, 2)
            image, layout = grid.tile(tiles, scale=scale, padding=2, pad_value=235)
            headers["X-Convscope-Channels"] = ",".join(map(str, order))
        headers["X-Convscope-Grid"] = layout.header()
        return Rendered(encode.png(grid.to_pixels(image).numpy()), PNG, headers)

    def _check_scale(self, scale: int) -> None:
        if not 1 <= scale <= self.max_scale:
            raise InvalidParameterError(
                "scale", f"expected 1 <= scale <= {self.max_scale}, got {scale}"
            )

    # --- first-layer filter analysis ------------------------------------------------------

    def filter_traits(self, model_name: str, layer: str) -> list[analysis.FilterTraits]:
        """Traits of every filter of a conv layer that reads the image (422 otherwise)."""
        model = self.registry.get(model_name)
        module = model.submodule(layer)
        if not isinstance(module, nn.Conv2d):
            raise NotAConvLayerError(model.name, layer, type(module).__name__)
        key = (model.name, model.spec.weights, layer)

        def compute() -> list[analysis.FilterTraits]:
            self._check_reads_image(model, layer, module)
            if module.groups != 1 or module.in_channels != 3:
                raise NotOnImageError(
                    model.name,
                    layer,
                    f"has {module.in_channels} input channels in "
                    f"{module.groups} groups, expected 3 in one group",
                )
            return analysis.analyse(module.weight.detach().to("cpu", torch.float32))

        return self._traits.get_or_compute(key, compute)

    @staticmethod
    def _check_reads_image(model: LoadedModel, layer: str, module: nn.Module) -> None:
        x = torch.zeros(1, 3, *model.spec.preprocessing.input_size, device=model.device)
        seen: dict[str, bool] = {}

        def check(_m: nn.Module, inputs: Any) -> None:
            seen["image"] = bool(inputs) and inputs[0] is x
            raise _Checked

        with HookScope() as scope, torch.no_grad():
            scope.pre_forward(module, check)
            with contextlib.suppress(_Checked):
                model.module(x)
        if not seen.get("image"):
            why = "never runs" if not seen else "reads the output of another layer"
            raise NotOnImageError(model.name, layer, why)

    def analysis(
        self, model_name: str, layer: str, fmt: Literal["json", "png"], scale: int | None = None
    ) -> Rendered:
        """JSON: per-filter traits and the grouped order; PNG: RGB tiles grouped and sorted."""
        traits = self.filter_traits(model_name, layer)
        groups = analysis.sorted_groups(traits)
        group_header = ";".join(f"{k}:{','.join(map(str, v))}" for k, v in groups.items())
        headers = {"X-Convscope-Groups": group_header}
        if fmt == "json":
            payload = {
                "model": model_name,
                "layer": layer,
                "filters": [t.as_dict() for t in traits],
                "groups": groups,
                "conventions": {
                    "orientation": "degrees in [0, 180), wave vector counter-clockwise from x "
                    "as drawn: 0 = vertical stripes; null for blobs",
                    "frequency": "cycles per pixel",
                    "energy": "sum of squared weights",
                },
            }
            return Rendered(encode.json(payload), JSON, headers)
        conv = self.registry.get(model_name).submodule(layer)
        assert isinstance(conv, nn.Conv2d)  # filter_traits checked it
        weight = conv.weight.detach().to("cpu", torch.float32)
        scale = scale or _auto_scale(max(weight.shape[-2:]), 24, self.max_scale)
        self._check_scale(scale)
        unit = grid.symmetric_unit(weight, "layer")
        sections = []
        ncol = min(16, max(len(v) for v in groups.values()))
        for members in groups.values():
            tiles = torch.from_numpy(encode.to_uint8(unit[members]))
            image, _ = grid.tile(tiles, scale=scale, padding=2, ncol=ncol)
            pixels = grid.to_pixels(image).numpy()
            if len(members) == 1:  # grid.tile drops the padding around a lone tile
                pixels = np.pad(pixels, ((2, 2), (2, 2), (0, 0)), constant_values=255)
            sections.append(pixels)
        picture, tops = diverging.stack_sections(sections, gap=3 * scale)
        headers["X-Convscope-Sections"] = ",".join(map(str, tops))
        headers["X-Convscope-Channels"] = ",".join(str(i) for v in groups.values() for i in v)
        return Rendered(encode.png(picture), PNG, headers)

    # --- two models -----------------------------------------------------------------------

    def compare(self, model_a: str, model_b: str, image_id: str | None) -> dict[str, Any]:
        """Per-layer weight change and filter cosine; with an image, CKA and activation change."""
        a, b = self.registry.get(model_a), self.registry.get(model_b)
        pairs = compare.check_same_architecture(a.name, a.module, b.name, b.module)
        x = None
        if image_id is not None:
            _, image = self.images.open(image_id)
            x = a.spec.preprocessing(image)[None].to(a.device)
        with self.gate.slot():
            result = compare.compare(pairs, [info.name for info in a.layers], x, a.module, b.module)
        return {"a": a.name, "b": b.name, "image": image_id, **result.as_dict()}
