"""Filter tiles: RGB, picked or reduced input channels, depthwise and grouped convs."""

import io

import numpy as np
import pytest
import torch
from torch import nn

from convscope.errors import InvalidParameterError, NotAConvLayerError
from convscope.services.facade import Convscope
from convscope.services.inspection.filters import FilterView, auto_scale, conv_weight, filter_tiles
from tests.conftest import DEFAULT


def test_filters_npy_equals_the_layer_weights(service: Convscope, model) -> None:
    for layer in ["conv_stem", "blocks.0.0.conv_dw", "blocks.3.1.conv_pw", "conv_head"]:
        rendered = service.filters(DEFAULT, layer, "npy", FilterView())
        weights = np.load(io.BytesIO(rendered.content), allow_pickle=False)
        expected = model.module.get_submodule(layer).weight.detach().numpy()
        assert weights.dtype == np.float32 and np.array_equal(weights, expected), layer


def test_conv_weight_rejects_non_conv_layers(model) -> None:
    with pytest.raises(NotAConvLayerError, match="BatchNormAct2d"):
        conv_weight(model, "bn1")


def test_first_layer_is_rgb_with_zero_at_mid_grey() -> None:
    w = torch.zeros(4, 3, 3, 3)
    w[0, 0, 1, 1] = 2.0
    w[0, 2, 0, 0] = -2.0
    tiles, mode = filter_tiles(w, FilterView())
    assert mode == "rgb" and tiles.shape == (4, 3, 3, 3)
    assert tiles[0, 0, 1, 1] == 1.0 and tiles[0, 2, 0, 0] == 0.0 and tiles[0, 1, 0, 0] == 0.5
    assert torch.all(tiles[1:] == 0.5)


def test_deeper_layers_pick_or_reduce_input_channels() -> None:
    conv = nn.Conv2d(8, 6, 3)
    w = conv.weight.detach()
    picked, mode = filter_tiles(w, FilterView(input_channel=5))
    assert mode == "input_channel 5" and picked.shape == (6, 1, 3, 3)
    peak = w[:, 5].abs().flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose(picked[:, 0], w[:, 5] / (2 * peak) + 0.5)
    mean, _ = filter_tiles(w, FilterView(normalize="filter"))
    m = w.mean(1)
    assert torch.allclose(mean[:, 0], m / (2 * m.abs().flatten(1).amax(1).view(-1, 1, 1)) + 0.5)
    l2, _ = filter_tiles(w, FilterView(reduce="l2", normalize="filter"))
    assert l2.min() >= 0 and torch.allclose(l2.flatten(1).amax(1), torch.ones(6))
    absmax, _ = filter_tiles(w, FilterView(reduce="abs_max"))
    assert absmax.shape == (6, 1, 3, 3)
    with pytest.raises(InvalidParameterError, match="0 <= input_channel < 8"):
        filter_tiles(w, FilterView(input_channel=8))


def test_depthwise_and_grouped_convs() -> None:
    depthwise = nn.Conv2d(16, 16, 3, groups=16).weight.detach()
    tiles, mode = filter_tiles(depthwise, FilterView())
    assert mode == "depthwise" and tiles.shape == (16, 1, 3, 3)
    grouped = nn.Conv2d(8, 4, 3, groups=2).weight.detach()  # 4 input channels per filter
    tiles, _ = filter_tiles(grouped, FilterView(input_channel=3))
    assert tiles.shape == (4, 1, 3, 3)
    with pytest.raises(InvalidParameterError):
        filter_tiles(grouped, FilterView(input_channel=4))


def test_auto_scale_makes_small_kernels_visible() -> None:
    assert auto_scale(3) == 11 and auto_scale(11) == 3 and auto_scale(1) == 32
