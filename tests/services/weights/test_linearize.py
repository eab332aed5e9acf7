"""Max pooling in the linearised network becomes the mean over the same windows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.services.weights.linearize import _as_average

pytestmark = pytest.mark.quick


def _window_means(x: torch.Tensor, out_shape: torch.Size, k: int, s: int, p: int, d: int):
    """Brute force: the mean of each dilated window's pixels inside the image."""
    ref = torch.zeros(out_shape)
    h, w = x.shape[-2:]
    for i in range(out_shape[2]):
        for j in range(out_shape[3]):
            vals = [
                x[:, :, i * s - p + a * d, j * s - p + b * d]
                for a in range(k)
                for b in range(k)
                if 0 <= i * s - p + a * d < h and 0 <= j * s - p + b * d < w
            ]
            ref[:, :, i, j] = torch.stack(vals).mean(0)
    return ref


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("padding", [0, 1])
def test_dilated_max_pool_becomes_the_window_mean(ceil_mode: bool, padding: int) -> None:
    x = torch.randn(2, 3, 11, 13, generator=torch.Generator().manual_seed(0))
    pool = nn.MaxPool2d(3, 2, padding, dilation=2, ceil_mode=ceil_mode)
    out = pool(x)
    got = _as_average(pool, x, out)
    assert got.shape == out.shape
    assert torch.allclose(got, _window_means(x, out.shape, 3, 2, padding, 2), atol=1e-6)


def test_plain_max_pool_is_average_pooling_without_padding() -> None:
    x = torch.randn(1, 4, 9, 9, generator=torch.Generator().manual_seed(1))
    pool = nn.MaxPool2d(3, 2, 1)
    expected = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    assert torch.equal(_as_average(pool, x, pool(x)), expected)
