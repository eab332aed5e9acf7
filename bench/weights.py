"""Weights that read: expanded-weights and model-compare latency, in-process.

``python -m bench.weights`` prints just these rows. Expanded weights are measured uncached
(a different channel each run, so the service's cache never answers) for a deep channel onto
the image, against the issue's 100 ms target; compare runs the default model against itself
on the cat sample (two full captures, CKA at every layer).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.table import Row, median, render
from convscope.config import Settings
from convscope.services.facade import Convscope

MODEL = "efficientnet_lite0"
DEEP = "conv_head"  # the last conv: its receptive field is the whole image


def _times(fn: Callable[[int], object], runs: int) -> list[float]:
    fn(-1)  # warm-up
    out = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def weights_rows(data_dir: Path, runs: int = 10) -> list[Row]:
    empty = data_dir / "empty"
    empty.mkdir(exist_ok=True)
    service = Convscope(Settings(data_dir=data_dir, models_dir=empty, weights_dir=empty))
    service.load_default()
    cat = next(r["id"] for r in service.list_images() if r["name"] == "cat")
    rows = []
    for layer in ("blocks.5", DEEP):
        uncached = _times(
            lambda i, layer=layer: service.expanded(MODEL, layer, 10 + i, "input", "npy"), runs
        )
        rows.append(
            Row(
                f"expanded weights {layer} onto input, uncached",
                median(uncached) * 1000,
                "ms",
                100.0,
                "target",
                "<= 1.0x",
                samples=runs,
                note=f"{layer}: linearised forward to the layer + backward to the image, "
                "224x224, a new channel each run",
            )
        )
    cached = _times(lambda _i: service.expanded(MODEL, DEEP, 3, "input", "png"), runs)
    rows.append(
        Row(
            f"expanded weights {DEEP} onto input, cached, PNG",
            median(cached) * 1000,
            "ms",
            samples=runs,
        )
    )
    n = max(2, runs // 3)
    compare = _times(lambda _i: service.compare_models(MODEL, MODEL, cat), n)
    rows.append(
        Row(
            "compare default vs itself, cat image",
            median(compare) * 1000,
            "ms",
            samples=n,
            note="two captures of every module, weight change, filter cosine and linear CKA "
            "per layer",
        )
    )
    weights_only = _times(lambda _i: service.compare_models(MODEL, MODEL), n)
    rows.append(
        Row("compare default vs itself, weights only", median(weights_only) * 1000, "ms", samples=n)
    )
    service.shutdown()
    return rows


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        print(render(weights_rows(Path(scratch))))  # noqa: T201 -- the report is the output
