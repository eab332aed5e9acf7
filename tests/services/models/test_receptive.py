"""Receptive-field boxes contain every input pixel the activation's gradient reaches."""

from __future__ import annotations

import contextlib

import pytest
import torch

from convscope.errors import NoActivationError
from convscope.services.models.receptive import ReceptiveFields, layer_boxes

DEFAULT = "efficientnet_lite0"


class _Stop(Exception):
    pass


def _gradient_support(model, x: torch.Tensor, layer: str, channel: int, y: int, xx: int):  # type: ignore[no-untyped-def]
    """Rows and columns where d out[channel, y, x] / d input != 0 (plain hook, no LayerTap)."""
    module = dict(model.module.named_modules())[layer]
    kept: list[torch.Tensor] = []

    def hook(_m, _i, out):  # type: ignore[no-untyped-def]
        kept.append(out)
        raise _Stop  # nothing after the layer matters

    handle = module.register_forward_hook(hook)
    try:
        inp = x[None].clone().requires_grad_(True)
        with torch.enable_grad():
            with contextlib.suppress(_Stop):
                model.module(inp)
            (grad,) = torch.autograd.grad(kept[0][0, channel, y, xx], inp)
    finally:
        handle.remove()
    mask = grad[0].abs().sum(0) > 0
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return rows, cols


@pytest.mark.parametrize("layer", ["conv_stem", "blocks.1.0.conv_dw", "blocks.3", "bn2"])
def test_boxes_contain_the_input_gradient(model, samples, service, layer: str) -> None:  # type: ignore[no-untyped-def]
    import io

    from PIL import Image

    _, data = service.image(samples["cat"])
    x = model.spec.preprocessing(Image.open(io.BytesIO(data)).convert("RGB"))
    boxes = layer_boxes(model, layer)
    _, height, width = model.layer(layer).output_shape
    positions = {(0, 0), (height - 1, width - 1), (height // 2, width // 3), (1, width - 2)}
    for y, xx in sorted(positions):
        for channel in (0, 7) if y == 0 else (3,):
            rows, cols = _gradient_support(model, x, layer, channel, y, xx)
            if rows.numel() == 0:
                continue  # a dead activation: no gradient to contain
            top, left, bottom, right = boxes.box(y, xx)
            assert top <= int(rows.min()) and int(rows.max()) < bottom, (layer, y, xx)
            assert left <= int(cols.min()) and int(cols.max()) < right, (layer, y, xx)
    # Tight where nothing clips: the first layer's box is its 3x3 kernel.
    if layer == "conv_stem":
        assert boxes.box(height // 2, width // 2)[2] - boxes.box(height // 2, width // 2)[0] == 3


def test_memo_and_flat_layers(model) -> None:  # type: ignore[no-untyped-def]
    fields = ReceptiveFields()
    assert fields.get(model, "blocks.2") is fields.get(model, "blocks.2")
    with pytest.raises(NoActivationError):
        layer_boxes(model, "classifier")
