"""Receptive-field boxes: which input pixels an activation at ``(y, x)`` of a layer depends on.

Computed by gradient, so it holds for any architecture (``Conv2dSame``'s asymmetric
padding, dilations, pooling, residual additions, even a squeeze-excite's global pooling) and
needs no table of layer types. For every output row ``y`` of the layer, the support of
``d(sum over channels and columns of out[:, y, :]) / d input`` gives the input rows ``y``
depends on; the same for columns. The box of ``(y, x)`` is then ``rows(y) x cols(x)``: it
contains the support of the gradient of any single activation ``out[c, y, x]`` (a union over
the row can only be larger). Two random inputs are probed and their supports united, so an
activation function that zeroes a gradient on one input does not shrink the box.

The probes are batched (one sample per probed row or column, a forward cut at the layer).
Eight rows and eight columns are probed; when the affine rule ``top(y) = a + s * y`` with a
fixed length, clipped to the input, reproduces all eight, it gives the others (what
convolutions, pooling and element-wise ops produce); otherwise every row and column is
probed. Computed once per (model, weights, layer) and kept by :class:`ReceptiveFields`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from convscope.errors import NoActivationError
from convscope.services.models.hooks import LayerTap, eval_mode
from convscope.services.models.registry import LoadedModel

PROBE_BATCH = 16


@dataclass(frozen=True)
class LayerBoxes:
    """Per output row: ``rows[y] = (top, bottom)``; per column ``cols[x] = (left, right)``.

    ``bottom`` and ``right`` are exclusive, in network-input pixels (``int32[H, 2]``,
    ``int32[W, 2]``); ``input_size`` is the network input ``(S_h, S_w)``.
    """

    rows: npt.NDArray[np.int32]
    cols: npt.NDArray[np.int32]
    input_size: tuple[int, int]

    def box(self, y: int, x: int) -> list[int]:
        """``[top, left, bottom, right]`` (bottom/right exclusive) of the activation at (y, x)."""
        top, bottom = self.rows[y]
        left, right = self.cols[x]
        return [int(top), int(left), int(bottom), int(right)]


def _extent(grad: torch.Tensor, dim: int) -> tuple[int, int]:
    """First and one-past-last index along ``dim`` (of ``[3, H, W]``) where ``grad`` != 0."""
    other = tuple(d for d in range(3) if d != dim)
    nonzero = grad.abs().amax(dim=other) > 0
    where = torch.nonzero(nonzero).flatten()
    if where.numel() == 0:
        return 0, 0
    return int(where[0]), int(where[-1]) + 1


def _probe(
    model: LoadedModel, layer: str, inputs: torch.Tensor, probes: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Input extent of each probe ``(axis, index)``: axis 0 = an output row, 1 = a column."""
    extents: list[tuple[int, int]] = []
    module = model.module
    with model.lock, eval_mode(module), LayerTap(module, [layer], model.name) as tap:
        for start in range(0, len(probes), PROBE_BATCH):
            chunk = probes[start : start + PROBE_BATCH]
            x = inputs.repeat_interleave(len(chunk), 0).requires_grad_(True)
            with torch.enable_grad():
                outputs, _ = tap.run(x)
                out = outputs[layer]
                if out.dim() != 4:
                    raise NoActivationError(model.name, layer, "its output is not 4-dimensional")
                total = out.new_zeros(())
                for j, (axis, index) in enumerate(chunk):
                    for copy in range(inputs.shape[0]):  # every random input, same probe
                        sample = out[copy * len(chunk) + j]
                        picked = sample[:, index, :] if axis == 0 else sample[:, :, index]
                        total = total + picked.sum()
                (grad,) = torch.autograd.grad(total, x)
            grad = grad.view(inputs.shape[0], len(chunk), *grad.shape[1:]).abs().sum(0)
            extents.extend(
                _extent(grad[j], 1 if axis == 0 else 2) for j, (axis, _) in enumerate(chunk)
            )
    return extents


def _affine(
    probed: dict[int, tuple[int, int]], count: int, size: int
) -> npt.NDArray[np.int32] | None:
    """Every index's extent from the two middle probes, if that predicts all the probes.

    Convolutions, pooling and element-wise ops give ``top(i) = a + s * i`` and a fixed
    length, clipped to the input; a global op gives the whole input for every index.
    """
    mid = count // 2
    if mid not in probed or mid + 1 not in probed:
        return None
    (t0, b0), (t1, b1) = probed[mid], probed[mid + 1]
    step = t1 - t0
    if b1 - b0 != step or step < 0:
        return None
    index = np.arange(count)
    top = np.clip(t0 + step * (index - mid), 0, size)
    bottom = np.clip(b0 + step * (index - mid), 0, size)
    # A clipped side tells nothing about the other: keep the unclipped formula where known.
    predicted = np.stack([top, bottom], 1).astype(np.int32)
    for i, extent in probed.items():
        if tuple(predicted[i]) != extent:
            return None
    return predicted


def layer_boxes(model: LoadedModel, layer: str, *, seed: int = 0) -> LayerBoxes:
    """Receptive fields of every row and column of ``layer``'s ``[C, H, W]`` output.

    Probes the first three, the two middle and the last three rows (and columns); when an
    affine rule clipped to the input (what convolutions, pooling, element-wise and global
    ops give) reproduces all eight, it gives the rest; otherwise every row and column is
    probed. Raises ``NoActivationError`` when the layer has no spatial output.
    """
    info = model.layer(layer)
    shape = info.output_shape
    if shape is None or len(shape) != 3:
        raise NoActivationError(model.name, layer, "its output is not a [C, H, W] feature map")
    _, height, width = shape
    size = model.spec.preprocessing.input_size
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(2, 3, *size, generator=generator).to(model.device)

    def sample(count: int) -> list[int]:
        mid = count // 2
        picked = {0, 1, 2, mid, mid + 1, count - 3, count - 2, count - 1}
        return sorted(i for i in picked if 0 <= i < count)

    axes = {0: (height, int(size[0])), 1: (width, int(size[1]))}
    first = [(axis, i) for axis, (count, _) in axes.items() for i in sample(count)]
    found = dict(zip(first, _probe(model, layer, inputs, first), strict=True))
    result: dict[int, npt.NDArray[np.int32]] = {}
    for axis, (count, extent) in axes.items():
        probed = {i: found[(axis, i)] for i in sample(count)}
        fitted = _affine(probed, count, extent) if count > 8 else None
        if fitted is None:
            rest = [(axis, i) for i in range(count) if i not in probed]
            probed.update(
                (i, e) for (_, i), e in zip(rest, _probe(model, layer, inputs, rest), strict=True)
            )
            fitted = np.array([probed[i] for i in range(count)], np.int32).reshape(count, 2)
        result[axis] = fitted
    return LayerBoxes(result[0], result[1], (int(size[0]), int(size[1])))


class ReceptiveFields:
    """A per-(model, weights, layer) memo of :func:`layer_boxes`. No module state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boxes: dict[tuple[str, str, str], LayerBoxes] = {}

    def get(self, model: LoadedModel, layer: str) -> LayerBoxes:
        key = (model.name, str(model.spec.weights), layer)
        with self._lock:
            found = self._boxes.get(key)
        if found is not None:
            return found
        boxes = layer_boxes(model, layer)
        with self._lock:
            self._boxes[key] = boxes
        return boxes
