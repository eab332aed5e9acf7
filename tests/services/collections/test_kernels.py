"""The index kernels equal their plain definitions: the per-row statistics torch's
reductions, the fold a sort, the histogram ``searchsorted``; edge values included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.services.collections.index import HIST_EDGES
from convscope.services.collections.kernels import fold, row_stats

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


def test_argmax_only_where_a_row_can_reach_the_floors() -> None:
    channels = 30
    flat = torch.randn(10 * channels, 50, generator=torch.Generator().manual_seed(1))
    flat[7] = -1.0
    flat[7, 3] = -0.0
    flat[7, 9] = 0.0  # the max is a zero; the first zero is -0.0: numpy and torch take it
    peak, where, total, *_ = _torch_stats(flat)
    floor_max = np.full(channels, 1.5, np.float32)
    floor_mean = np.full(channels, 0.1, np.float32)
    floor_max[7] = floor_mean[7] = -np.inf  # row 7 always searched
    floor_max[8] = np.nan  # a NaN floor (a NaN k-th score) lets every row in
    got = row_stats(flat.numpy(), (floor_max, floor_mean))
    mean = (total / 50).astype(np.float32)
    column = np.arange(len(flat)) % channels
    below = (peak < floor_max[column]) & (mean < floor_mean[column])
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(got.where[~below], where[~below])
    assert (got.where[below] == -1).all()
    np.testing.assert_array_equal(got.peak, peak)  # -0.0 == 0.0
    assert got.where[7] == 3 and (got.where[column == 8] >= 0).all()


def _reference_fold(peak: np.ndarray, mean: np.ndarray, where: np.ndarray, k: int) -> tuple:
    """Sort each channel's images by (score desc, image asc; NaN as -inf), keep k."""
    batch = peak.shape[0]
    out = []
    for scores in (peak, mean):
        ranked = np.where(np.isnan(scores), -np.inf, scores)
        order = np.lexsort((np.broadcast_to(np.arange(batch)[:, None], scores.shape), -ranked), 0)
        order = order[:k]
        out.append(
            (
                np.take_along_axis(scores, order, 0).T,
                order.T.astype(np.int32),
                np.take_along_axis(where, order, 0).T,
            )
        )
    return tuple(out)


@pytest.mark.parametrize("k", [1, 4, 40])
def test_fold_in_batches_equals_one_sort(k: int) -> None:
    rng = np.random.default_rng(k)
    images, channels = 30, 50
    peak = rng.normal(size=(images, channels)).astype(np.float32)
    peak[:, 0] = 1.0  # ties over a whole channel: the lower image first
    peak[::4, 1] = np.nan  # NaN ranks last
    peak[3, 2] = np.inf
    peak[5, 3] = HIST_EDGES[40]  # exactly on an edge: counted in the bin above
    mean = rng.normal(size=(images, channels)).astype(np.float32)
    mean[:, 4] = 0.0
    where = rng.integers(0, 99, (images, channels)).astype(np.int32)
    score = np.full((2, channels, k), np.nan, np.float32)
    image = np.zeros((2, channels, k), np.int32)
    pos = np.zeros((2, channels, k), np.int32)
    hist = np.zeros((channels, len(HIST_EDGES) + 1), np.int64)
    for first in range(0, images, 7):
        rows = slice(first, first + 7)
        fold(
            peak[rows],
            mean[rows],
            where[rows],
            first,
            min(first, k),
            (score, image, pos),
            HIST_EDGES,
            hist,
        )
    fill = min(k, images)
    for which, (s, i, p) in enumerate(_reference_fold(peak, mean, where, k)):
        np.testing.assert_array_equal(score[which, :, :fill], s)
        np.testing.assert_array_equal(image[which, :, :fill], i)
        np.testing.assert_array_equal(pos[which, :, :fill], p)
    bins = np.searchsorted(HIST_EDGES, peak, side="right")
    expected = np.stack([np.bincount(bins[:, c], minlength=hist.shape[1]) for c in range(channels)])
    np.testing.assert_array_equal(hist, expected)


def test_histogram_bins_equal_searchsorted_at_the_edges() -> None:
    edges32 = HIST_EDGES.astype(np.float32)
    values = np.concatenate(
        [
            edges32,
            np.nextafter(edges32, np.float32(np.inf)),
            np.nextafter(edges32, np.float32(-np.inf)),
            np.array([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, np.inf, -np.inf, np.nan], np.float32),
        ]
    )
    peak = values[:, None].astype(np.float32)
    hist = np.zeros((1, len(HIST_EDGES) + 1), np.int64)
    top = (
        np.zeros((2, 1, 1), np.float32),
        np.zeros((2, 1, 1), np.int32),
        np.zeros((2, 1, 1), np.int32),
    )
    for i in range(len(values)):
        fold(
            peak[i : i + 1],
            peak[i : i + 1],
            np.zeros((1, 1), np.int32),
            i,
            min(i, 1),
            top,
            HIST_EDGES,
            hist,
        )
    bins = np.searchsorted(HIST_EDGES, values.astype(np.float64), side="right")
    np.testing.assert_array_equal(hist[0], np.bincount(bins, minlength=hist.shape[1]))


def test_accelerator_path_computes_what_the_kernel_does() -> None:
    """Maps on a GPU are reduced with torch ops on the device (every argmax); run on the CPU
    here, they give the kernel's statistics."""
    from convscope.services.collections.stream import _stats_torch

    flat = torch.randn(64, 300, generator=torch.Generator().manual_seed(2)).clamp(min=-0.5)
    on_device = _stats_torch(flat)
    kernel = row_stats(flat.numpy())
    for name in ("peak", "where", "nonpos"):
        np.testing.assert_array_equal(getattr(on_device, name), getattr(kernel, name))
    np.testing.assert_allclose(on_device.total, kernel.total, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(on_device.squares, kernel.squares, rtol=1e-5)
