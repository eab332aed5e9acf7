"""The fused per-row statistics equal torch's reductions, edge values included."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from convscope.services.collections.kernels import row_stats

pytestmark = pytest.mark.quick


def _torch_stats(flat: torch.Tensor) -> tuple[np.ndarray, ...]:
    peak, where = flat.max(dim=1)
    return (
        peak.numpy(),
        where.numpy(),
        flat.double().sum(1).numpy(),
        flat.double().square().sum(1).numpy(),
        (flat <= 0).sum(1).numpy(),
    )


@pytest.mark.parametrize("width", [1, 7, 1024, 1027, 3089])
def test_row_stats_equal_torch(width: int) -> None:
    rng = torch.Generator().manual_seed(width)
    flat = torch.randn(200, width, generator=rng)
    flat[:50] = flat[:50].clamp(min=0)  # post-ReLU rows: many zeros, some all zero
    flat[3] = 0.0
    flat[4, :] = -1.0  # a tie over the whole row: the first position
    if width > 2:
        flat[5, 1] = flat[5, 2] = flat[5].max() + 1  # a tie for the max
    peak, where, total, squares, nonpos = _torch_stats(flat)
    got = row_stats(flat.numpy())
    np.testing.assert_array_equal(got.peak, peak)
    np.testing.assert_array_equal(got.where, where)
    np.testing.assert_array_equal(got.nonpos, nonpos)
    magnitude = flat.double().abs().sum(1).numpy()
    assert (np.abs(got.total - total) <= 1e-5 * magnitude + 1e-12).all()
    np.testing.assert_allclose(got.squares, squares, rtol=1e-5)


def test_nan_and_infinities_as_torch() -> None:
    flat = torch.zeros(4, 9)
    flat[0, 5] = float("nan")
    flat[0, 7] = float("nan")
    flat[1, 2] = float("inf")
    flat[2, 3] = float("-inf")
    flat[3, 1] = float("-inf")
    flat[3, 6] = float("inf")  # inf - inf: the sum is NaN, the max is still inf
    peak, where, *_ = _torch_stats(flat)
    got = row_stats(flat.numpy())
    np.testing.assert_array_equal(got.peak, peak)  # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(got.where, where)
    assert got.where.tolist() == [5, 2, 0, 6]


def test_split_over_a_pool_equals_one_call() -> None:
    flat = torch.randn(1000, 300, generator=torch.Generator().manual_seed(1)).numpy()
    one = row_stats(flat)
    with ThreadPoolExecutor(2) as pool:
        split = row_stats(flat, pool, parts=3)
    for name in ("peak", "where", "total", "squares", "nonpos"):
        np.testing.assert_array_equal(getattr(split, name), getattr(one, name))
