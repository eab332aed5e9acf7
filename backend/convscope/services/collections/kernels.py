"""The index's two hand-written loops, compiled by numba (imported on first use: an idle
server does not load it).

* :func:`row_stats`: per row of a layer's feature maps ``float32[R, N]``: the max, the sum,
  the sum of squares and the count of values ``<= 0``, in one vectorised pass, and the argmax
  only for the rows that may still enter their channel's top-k (given floors: the k-th best
  scores so far). With k = 16 a third of the rows over 256 images were searched (measured),
  fewer as the collection grows (about 2k ln(N/k) / N); the search runs in the row just read
  (in cache). The max is taken over an order-preserving integer key of the float bits
  (integer max vectorises, the float max with NaN semantics does not), so it is the value a
  ``>`` comparison would keep; rows with a NaN (or ``inf - inf``) are handed to numpy, whose
  ``argmax`` means what ``torch.max(dim)`` means: the first position of the maximum, a NaN the
  maximum.
* :func:`fold`: the batch's per-image scores into a running top-k (insertion into sorted
  rows; an image that cannot enter costs one comparison) and the fixed-bin histogram (a guess
  from the float's exponent, then exact steps: ``searchsorted``'s bins).

Measured in the forward hooks (EfficientNet-Lite0, every spatial module, batch 4, each
alternated with a no-op hook): this pass without the argmax 5.3 ms an image; in an earlier
run of the same harness, the previous kernel (numpy's argmax plus a float64 sums pass, rows
over 2 threads) 7.8 ms and torch ops (``amax``, ``sum``, ``vector_norm``,
``(x <= 0).sum``) 12.6 ms on 2 threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

_compiled: dict[str, Callable[..., Any]] = {}
_compile_lock = threading.Lock()
# Reordering the float64 sums (to vectorise), not 'nnan'/'ninf': NaN and inf keep their meaning
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
_LOW = -(2**31)


def _key(x: Any) -> Any:  # pragma: no cover - inlined into the compiled loops
    """The int32 bits of a float32 to an int32 whose order is the floats' (-0.0 as 0.0)."""
    sign = x >> 31
    return (x ^ (sign & 0x7FFFFFFF)) - sign


def _stats_py(
    flat: Any,
    bits: Any,
    floor_max: Any,
    floor_mean: Any,
    out: Any,
) -> None:  # pragma: no cover - compiled by numba; its Python body runs only there
    peak, peak_bits, where, total, squares, nonpos = out
    rows, width = flat.shape
    channels = floor_max.shape[0]
    ch = -1
    for r in range(rows):  # rows are [B, C]: the channel runs 0 .. C-1, then again
        ch = ch + 1 if ch + 1 < channels else 0
        values = flat[r]
        s = 0.0
        q = 0.0
        c: Any = 0
        for i in range(width):  # vectorised: fastmath lets it reorder the float64 sums
            v = np.float64(values[i])
            s += v
            q += v * v
            c += v <= 0
        words = bits[r]
        top: Any = np.int32(_LOW)
        for i in range(width):  # a second loop over the row, now in cache: integer max
            top = max(top, _key_jit(words[i]))
        total[r] = s
        squares[r] = q
        nonpos[r] = c
        # the max's own bits: the inverse of _key (a key >= 0 is the float's bits)
        found = (top - 1) ^ 0x7FFFFFFF if top < 0 else top
        peak_bits[r] = found
        where[r] = -1
        if s != s:
            continue  # a NaN, or inf and -inf: left to numpy
        if peak[r] < floor_max[ch] and np.float32(s / width) < floor_mean[ch]:
            continue  # cannot enter the channel's top-k: no argmax needed
        # the first position of the max: its bits, or either zero's when the max is a zero
        mask = np.int32(0x7FFFFFFF) if top == 0 else np.int32(-1)
        target = found & mask
        j = 0
        while (words[j] & mask) != target:
            j += 1
        where[r] = j
        peak[r] = values[j]


def _fold_py(
    peak: Any,
    mean: Any,
    where: Any,
    first: int,
    fill: int,
    peak_bits: Any,
    score: Any,
    image: Any,
    pos: Any,
    edges: Any,
    hist: Any,
) -> None:  # pragma: no cover - compiled by numba; its Python body runs only there
    """Images ``first + b`` (rows of ``peak``/``mean``: ``[B, C]``) into the sorted top-k
    rows ``score/image/pos[0 or 1, C, k]`` (0: by max, 1: by mean) holding ``fill`` entries,
    and each peak into ``hist[C, len(edges) + 1]`` (``searchsorted(edges, peak, 'right')``)."""
    batch, channels = peak.shape
    k = score.shape[2]
    last = edges.shape[0]
    for c in range(channels):  # a channel's rows stay in cache over the batch's images
        for b in range(batch):
            n = min(fill + b, k)
            v = peak[b, c]
            # the bin: a guess from the exponent (edges are +-2^(j/2)), then exact steps
            if v != v:
                g = last
            else:
                g = _guess_jit(peak_bits[b, c], v > 0)
                while g < last and edges[g] <= v:
                    g += 1
                while g > 0 and edges[g - 1] > v:
                    g -= 1
            hist[c, g] += 1
            for which in range(2):
                s = v if which == 0 else mean[b, c]
                rank = -np.inf if s != s else s
                img = first + b
                j = n
                if j == k:  # full: must beat the last entry
                    last_s = score[which, c, k - 1]
                    last_rank = -np.inf if last_s != last_s else last_s
                    if not (
                        rank > last_rank or (rank == last_rank and img < image[which, c, k - 1])
                    ):
                        continue
                    j = k - 1
                while j > 0:
                    prev_s = score[which, c, j - 1]
                    prev_rank = -np.inf if prev_s != prev_s else prev_s
                    if rank > prev_rank or (rank == prev_rank and img < image[which, c, j - 1]):
                        if j < k:
                            score[which, c, j] = prev_s
                            image[which, c, j] = image[which, c, j - 1]
                            pos[which, c, j] = pos[which, c, j - 1]
                        j -= 1
                    else:
                        break
                score[which, c, j] = s
                image[which, c, j] = img
                pos[which, c, j] = where[b, c]


def _guess_py(bits: Any, positive: bool) -> int:  # pragma: no cover - inlined into the fold
    # HIST_EDGES: 29 negative edges, 0, 29 positive ones (+-2^(-6 .. 8) in half octaves)
    if bits & 0x7FFFFFFF == 0:
        return 30
    exponent = ((bits >> 23) & 0xFF) - 127  # |v| in [2^e, 2^(e + 1))
    j = min(max(2 * exponent + 12, 0), 28)
    return 30 + j if positive else 28 - j


# Replaced by their numba forms before the loops that call them are compiled.
_key_jit: Any = _key
_guess_jit: Any = _guess_py


def _jit(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    import numba

    try:
        return numba.njit(cache=True, nogil=True, **options)(fn)
    except RuntimeError:  # no writable cache location (a read-only install)
        log.info("numba cache unavailable; compiling %s in memory", fn.__name__)
        return numba.njit(nogil=True, **options)(fn)


def _compile() -> None:
    import numba

    global _key_jit, _guess_jit
    _key_jit = numba.njit(inline="always")(_key)
    _guess_jit = numba.njit(inline="always")(_guess_py)
    # One thread, the caller's. Tried: the statistics over 2 threads on numba's pool cost
    # more than they saved (a launch ~0.1 ms a layer; measured alternated, EfficientNet-Lite0,
    # batch 8, every spatial module: 28.0 ms an image on one thread, 32.1 with the large
    # layers over 2 threads, 30.5 with all); numba's OpenMP layer shares the runtime torch
    # loaded, and its launches reset the thread count torch's forwards then use.
    _compiled["stats"] = _jit(_stats_py, fastmath=_FASTMATH)
    _compiled["fold"] = _jit(_fold_py)


def _run(name: str, *args: Any) -> None:
    with _compile_lock:
        if not _compiled:
            _compile()
    _compiled[name](*args)


class RowStats:
    """Statistics of each row of a ``float32[R, N]`` array; ``where`` is -1 where no argmax
    was asked for."""

    def __init__(self, rows: int) -> None:
        self.peak: npt.NDArray[np.float32] = np.empty(rows, np.float32)
        self.where: npt.NDArray[np.int32] = np.empty(rows, np.int32)
        self.total: npt.NDArray[np.float64] = np.empty(rows, np.float64)
        self.squares: npt.NDArray[np.float64] = np.empty(rows, np.float64)
        self.nonpos: npt.NDArray[np.int64] = np.empty(rows, np.int64)

    def arrays(self) -> tuple[npt.NDArray[Any], ...]:
        """What the kernel writes: peak (and its bits), where, total, squares, nonpos."""
        return (
            self.peak,
            self.peak.view(np.int32),
            self.where,
            self.total,
            self.squares,
            self.nonpos,
        )


def row_stats(
    flat: npt.NDArray[np.float32],
    floors: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None,
) -> RowStats:
    """Max, sums and count of each row of ``flat`` (C-contiguous ``float32[R, N]``,
    ``N >= 1``) in one pass, and the argmax of each row, except where ``floors = (max, mean)``
    (``float32[C]``, rows laid out ``[B, C]``) say the row cannot enter its channel's top-k:
    its max and its mean both below the channel's floor. Where an argmax is known, ``peak``
    is the value read there. On the calling thread."""
    rows = flat.shape[0]
    out = RowStats(rows)
    if floors is None:
        low = np.full(1, -np.inf, np.float32)
        floors = (low, low)
    _run("stats", flat, flat.view(np.int32), floors[0], floors[1], out.arrays())
    odd = np.isnan(out.total)  # a NaN, or inf and -inf: numpy's argmax decides
    if odd.any():
        odd_rows = np.flatnonzero(odd)
        found = np.argmax(flat[odd_rows], axis=1)
        out.where[odd_rows] = found
        out.peak[odd_rows] = flat[odd_rows, found]
    return out


def fold(
    peak: npt.NDArray[np.float32],
    mean: npt.NDArray[np.float32],
    where: npt.NDArray[np.int32],
    first: int,
    fill: int,
    top: tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.int32]],
    edges: npt.NDArray[np.float64],
    hist: npt.NDArray[np.int64],
) -> None:
    """Fold a batch (``[B, C]`` each, image positions ``first ..``) into the running top-k
    ``top = (score, image, pos)``, each ``[2, C, k]`` sorted best first and holding ``fill``
    entries (0: by max, 1: by mean), and the histogram ``hist[C, len(edges) + 1]``, in place.
    Ranking: higher score first, then lower image position; NaN as -inf."""
    score, image, pos = top
    args = (peak, mean, where, first, fill, peak.view(np.int32), score, image, pos, edges, hist)
    _run("fold", *args)
