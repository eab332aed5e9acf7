"""The index's map, run as a stream: batches folded into one running partial, in place.

::

    stream = IndexStream(module, targets, k, start=None, first=0)
    stream.add(x: Tensor[B, 3, S, S]) -> dict[str, Scores]   # one forward pass
    stream.partial() -> Partial                              # what merge_all of the batches' gives
    map_batch(module, targets, x, first, k) -> (Partial, dict[str, Scores])   # a stream of one
    reduce_maps(maps: {layer: Tensor[B, C, H, W]}, first, k) -> (Partial, dict[str, Scores])

:meth:`IndexStream.add` runs ONE forward pass with a hook on every target module; each hook
reduces its module's output at once (:func:`kernels.row_stats`: max, sums, count; nothing of
the maps is kept), modules that return the very same tensor object (an ``Identity``, a block
returning its last layer's output) are reduced once, and the batch is then folded into the
running top-k lists, sums and histograms of all layers side by side (:func:`kernels.fold`).

Folding in place is the streaming form of :func:`index.merge`: the same top-k (the same
ranking: higher score, then lower image position), sums up to float64 rounding. What it saves
is the argmax: the hook knows each channel's current k-th best scores, and searches the
argmax only of the (image, channel) rows whose max or mean reaches them; the others cannot
enter the top-k, and their position is never read. Partials for a distributed run come from
:func:`map_batch` (every argmax found) and merge with :func:`index.merge_all`.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from convscope.services.collections import kernels
from convscope.services.collections.index import (
    HIST_BINS,
    HIST_EDGES,
    LayerPartial,
    Partial,
    Scores,
    TopK,
)
from convscope.services.models.hooks import HookScope, eval_mode

_Floors = Callable[[int, int], "tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None"]


@dataclass
class _Raw:
    """One distinct layer output's statistics, ``[B, C]`` each."""

    height: int
    width: int
    peak: npt.NDArray[np.float32]
    where: npt.NDArray[np.int32]
    total: npt.NDArray[np.float64]
    squares: npt.NDArray[np.float64]
    nonpos: npt.NDArray[np.int64]


def _stats_torch(flat: torch.Tensor) -> kernels.RowStats:
    """The row statistics with torch reductions on the maps' device (every argmax: cheap
    there); only ``[R]`` vectors come back to the host."""
    out = kernels.RowStats(flat.shape[0])
    peak, where = flat.max(dim=1)
    out.peak[:] = peak.cpu().numpy()
    out.where[:] = where.cpu().numpy()
    out.total[:] = flat.sum(dim=1, dtype=torch.float64).cpu().numpy()
    out.squares[:] = torch.linalg.vector_norm(flat, dim=1).double().square().cpu().numpy()
    out.nonpos[:] = (flat <= 0).sum(dim=1).cpu().numpy()
    return out


def _raw(maps: torch.Tensor, slot: int = 0, floors: _Floors | None = None) -> _Raw:
    batch, channels, height, width = maps.shape
    flat = maps.detach().reshape(batch * channels, height * width)
    if flat.dtype != torch.float32:
        flat = flat.float()
    if flat.device.type != "cpu":
        stats = _stats_torch(flat)  # on the accelerator, where the maps are
    else:
        found = None if floors is None else floors(slot, channels)
        stats = kernels.row_stats(flat.contiguous().numpy(), found)
    shape = (batch, channels)
    return _Raw(
        height,
        width,
        stats.peak.reshape(shape),
        stats.where.reshape(shape),
        stats.total.reshape(shape),
        stats.squares.reshape(shape),
        stats.nonpos.reshape(shape),
    )


def _forward_raws(
    module: nn.Module, targets: Mapping[str, nn.Module], x: torch.Tensor, floors: _Floors | None
) -> tuple[list[_Raw], dict[str, int]]:
    """One forward pass with a hook on every target: each distinct output's statistics, and
    for each layer name the position of its output in that list."""
    raws: list[_Raw] = []
    slot: dict[str, int] = {}
    # A module that returns its input (an Identity, a block returning its last layer's output)
    # hands on the very tensor object, unchanged (same version): reduced once. Keyed by the
    # object, checked through a weak reference: a freed tensor's address or id may come back
    # for a new tensor of the same shape later in the pass, which must not match.
    seen: dict[tuple[int, int], tuple[weakref.ref[torch.Tensor], int]] = {}

    def make_hook(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                return
            key = (id(output), output._version)
            entry = seen.get(key)
            if entry is None or entry[0]() is not output:
                entry = seen[key] = (weakref.ref(output), len(raws))
                raws.append(_raw(output, len(raws), floors))
            slot[name] = entry[1]

        return hook

    with HookScope() as hooks:
        for name, target in targets.items():
            hooks.forward(target, make_hook(name))
        # no_grad, not inference_mode: the de-duplication reads version counters.
        with eval_mode(module), torch.no_grad():
            module(x)
    missing = [name for name in targets if name not in slot]
    if missing:
        raise ValueError(f"layers without a [B, C, H, W] output in the forward pass: {missing}")
    return raws, slot


class IndexStream:
    """A running partial over a model's target layers, batches folded in as they come.

    ``start`` (a partial of the images before ``first``, e.g. the served index) is where the
    stream begins; ``first`` is the position of the next image. Not thread-safe: the caller
    serialises forwards that install hooks on a shared model (``LoadedModel.lock``).
    """

    def __init__(
        self,
        module: nn.Module | None,
        targets: Mapping[str, nn.Module],
        k: int,
        start: Partial | None = None,
        first: int = 0,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if start is not None and start.k != k:
            raise ValueError(f"cannot continue a partial of k={start.k} with k={k}")
        self.module, self.targets, self.k = module, targets, k
        self.start, self.next = start, first
        self._slot: dict[str, int] = {}
        self._shapes: list[tuple[int, int, int]] = []
        self._cut: list[slice] = []

    def add(self, x: torch.Tensor) -> dict[str, Scores]:
        """Forward ``x`` (``Tensor[B, 3, S, S]``, standardised) once; fold it in; return the
        batch's per-image scores per layer."""
        if self.module is None:
            raise ValueError("a stream without a module folds given maps only")
        raws, slot = _forward_raws(self.module, self.targets, x, self._floors)
        return self._fold(raws, slot)

    def _floors(
        self, slot: int, channels: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
        """Each channel's current k-th best max and mean for distinct output ``slot``: a row
        below both cannot enter (NaN floors let every row in). None: every row may."""
        if slot >= len(self._cut) or self._fill < self.k:
            return None
        cut = self._cut[slot]
        if cut.stop - cut.start != channels:
            return None  # not the layout of the first batch: every argmax; _fold then refuses
        return self._floor[0, cut], self._floor[1, cut]

    def _layout(self, raws: list[_Raw], slot: dict[str, int]) -> None:
        self._slot = dict(slot)
        self._shapes = [(r.peak.shape[1], r.height, r.width) for r in raws]
        channels = [c for c, _, _ in self._shapes]
        bounds = np.cumsum([0, *channels])
        self._cut = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        self._positions = np.repeat([float(h * w) for _, h, w in self._shapes], channels)
        columns = int(bounds[-1])
        k = self.k
        self._score = np.full((2, columns, k), np.nan, np.float32)
        self._image = np.zeros((2, columns, k), np.int32)
        self._pos = np.zeros((2, columns, k), np.int32)
        self._fill = 0
        self._floor = self._score[:, :, k - 1].copy()  # each channel's k-th score, contiguous
        self.count = 0
        self.total = np.zeros(columns, np.float64)
        self.total_sq = np.zeros(columns, np.float64)
        self.max = np.full(columns, -np.inf, np.float32)
        self.nonpos = np.zeros(columns, np.int64)
        self.mean_sum = np.zeros(columns, np.float64)
        self.mean_sq = np.zeros(columns, np.float64)
        self.hist = np.zeros((columns, HIST_BINS), np.int64)
        if self.start is not None:
            self._begin_from(self.start)

    def _begin_from(self, start: Partial) -> None:
        counts = {layer.count for layer in start.layers.values()}
        if len(counts) > 1:
            raise ValueError(f"a start partial whose layers saw different images: {counts}")
        self.count = next(iter(counts), 0)
        self._fill = min(self.k, self.count)
        for name, index in self._slot.items():
            layer = start.layers.get(name)
            cut = self._cut[index]
            if layer is None or (layer.channels, layer.height, layer.width) != self._shapes[index]:
                raise ValueError(f"the start partial does not match layer {name!r}")
            for which, top in enumerate((layer.top_max, layer.top_mean)):
                self._score[which, cut, : self._fill] = top.score
                self._image[which, cut, : self._fill] = top.image
                self._pos[which, cut, : self._fill] = top.pos
            for field in ("total", "total_sq", "max", "nonpos", "mean_sum", "mean_sq", "hist"):
                getattr(self, field)[cut] = getattr(layer, field)
        self._floor = self._score[:, :, self.k - 1].copy()

    def _fold(self, raws: list[_Raw], slot: dict[str, int]) -> dict[str, Scores]:
        if not self._cut:
            self._layout(raws, slot)
        shapes = [(r.peak.shape[1], r.height, r.width) for r in raws]
        if shapes != self._shapes or slot != self._slot:
            raise ValueError("the forward pass produced other layer outputs than the first batch")
        batch = raws[0].peak.shape[0]
        peak = np.concatenate([r.peak for r in raws], axis=1)
        where = np.concatenate([r.where for r in raws], axis=1)
        total = np.concatenate([r.total for r in raws], axis=1)
        squares = np.concatenate([r.squares for r in raws], axis=1)
        mean64 = total / self._positions
        mean = mean64.astype(np.float32)
        kernels.fold(
            peak,
            mean,
            where,
            self.next,
            self._fill,
            (self._score, self._image, self._pos),
            HIST_EDGES,
            self.hist,
        )
        self.total += total.sum(0)
        self.total_sq += squares.sum(0)
        self.max = np.maximum(self.max, peak.max(axis=0))
        self.nonpos += np.concatenate([r.nonpos for r in raws], axis=1).sum(0)
        self.mean_sum += mean64.sum(0)
        self.mean_sq += (mean64 * mean64).sum(0)
        self._fill = min(self.k, self._fill + batch)
        self._floor = self._score[:, :, self.k - 1].copy()
        self.count += batch
        self.next += batch
        # one object a distinct output: the index files store layers that share it once
        shared = [Scores(peak[:, cut], mean[:, cut]) for cut in self._cut]
        return {name: shared[index] for name, index in slot.items()}

    def partial(self) -> Partial:
        """The partial of the start and every batch so far (layers that share one output share
        one :class:`LayerPartial`)."""
        if not self._cut:
            if self.start is None:
                raise ValueError("nothing was added to the stream")
            return self.start
        fill = self._fill
        shared = []
        for index, cut in enumerate(self._cut):
            _, height, width = self._shapes[index]
            tops = [
                TopK(
                    self._score[which, cut, :fill].copy(),
                    self._image[which, cut, :fill].copy(),
                    self._pos[which, cut, :fill].copy(),
                )
                for which in (0, 1)
            ]
            shared.append(
                LayerPartial(
                    height=height,
                    width=width,
                    top_max=tops[0],
                    top_mean=tops[1],
                    count=self.count,
                    total=self.total[cut].copy(),
                    total_sq=self.total_sq[cut].copy(),
                    max=self.max[cut].copy(),
                    nonpos=self.nonpos[cut].copy(),
                    mean_sum=self.mean_sum[cut].copy(),
                    mean_sq=self.mean_sq[cut].copy(),
                    hist=self.hist[cut].copy(),
                )
            )
        return Partial(self.k, {name: shared[index] for name, index in self._slot.items()})


def map_batch(
    module: nn.Module,
    targets: Mapping[str, nn.Module],
    x: torch.Tensor,
    first: int,
    k: int,
) -> tuple[Partial, dict[str, Scores]]:
    """The partial of one batch (images ``first ..``): every argmax found, ready for
    :func:`index.merge_all`. ``targets`` maps layer names to submodules of ``module``."""
    stream = IndexStream(module, targets, k, first=first)
    scores = stream.add(x)
    return stream.partial(), scores


def reduce_maps(
    maps: Mapping[str, torch.Tensor], first: int, k: int
) -> tuple[Partial, dict[str, Scores]]:
    """The partial of a batch from its feature maps ``{layer: Tensor[B, C, H, W]}``."""
    stream = IndexStream(None, {}, k, first=first)
    raws = [_raw(maps[name]) for name in maps]
    scores = stream._fold(raws, {name: i for i, name in enumerate(maps)})
    return stream.partial(), scores
