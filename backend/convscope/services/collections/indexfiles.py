"""An index on disk: numpy ``.npz`` / ``.npy`` files in a generation folder, swapped atomically.

Layout, under a collection's folder::

    indexes/<model key>/CURRENT               name of the generation served (atomic_write)
    indexes/<model key>/gen-<uuid>/manifest.json
    indexes/<model key>/gen-<uuid>/layer-<i>.npz   top-k lists and statistics (small)
    indexes/<model key>/gen-<uuid>/scores-<i>.npy  float16[N, 2, C]: per-image max, mean

``<i>`` is the manifest's ``files[j]`` for its ``layers[j]``: layers with the same output
tensor share one pair of files.

``<model key>`` is a hash of the model's name, the sha256 of its parameters and buffers,
and its preprocessing: a changed model never reads a stale index. A build writes a new
``gen-*`` folder (a staging folder nobody reads), fsyncs it, then replaces ``CURRENT`` with
``atomic_write``; a cancelled or failed build leaves ``CURRENT`` (the old index) untouched
and its staging folder is removed. The per-image scores are written a batch at a time into
``.npy`` memory maps sized up front, so memory does not grow with the collection; readers
memory-map them too. Plain numpy files: a dependency already there, readable by any tool,
memory-mappable, and a folder rename/pointer swap is all the atomicity an index needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from convscope.services.collections.index import LayerPartial, Partial, Scores, TopK
from convscope.services.storage.files import atomic_write, fsync_dir

log = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)
STALE_STAGING_SECONDS = 24 * 3600.0


def _dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


class IndexWriter:
    """A staging generation: per-image scores written batch by batch, then the partial.

    Layers whose scores come as one object (modules returning the same tensor: an
    ``Identity``, a block returning its last layer's output; 261 names, 140 distinct outputs
    in EfficientNet-Lite0) share one scores file and one layer file (the manifest's
    ``files``: each layer's file number), which halves the index on disk."""

    def __init__(
        self,
        base: Path,
        shapes: dict[str, tuple[int, int, int]],
        total_images: int,
    ) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.folder = base / f"gen-{uuid.uuid4().hex}"
        self.folder.mkdir()
        self.names = list(shapes)
        self.shapes = shapes
        self.total_images = total_images
        self.files: list[int] | None = None  # per name, its file number: known at first write
        self.scores: dict[int, np.memmap[Any, np.dtype[np.float16]]] = {}
        self._copy: tuple[IndexReader, int] | None = None

    def _open(self, files: list[int]) -> None:
        self.files = files
        for number in sorted(set(files)):
            self.scores[number] = np.lib.format.open_memmap(
                self.folder / f"scores-{number}.npy",
                mode="w+",
                dtype=np.float16,
                shape=(self.total_images, 2, self.shapes[self.names[number]][0]),
            )
        if self._copy is not None:
            self._copy_now(*self._copy)

    def write_scores(self, first: int, scores: dict[str, Scores]) -> None:
        if self.files is None:
            number: dict[int, int] = {}
            self._open(
                [number.setdefault(id(scores[name]), i) for i, name in enumerate(self.names)]
            )
        for file, rows in self.scores.items():
            batch = scores[self.names[file]]
            n = batch.max.shape[0]
            rows[first : first + n, 0] = np.clip(batch.max, -FLOAT16_MAX, FLOAT16_MAX)
            rows[first : first + n, 1] = np.clip(batch.mean, -FLOAT16_MAX, FLOAT16_MAX)

    def copy_scores(self, old: IndexReader, count: int) -> None:
        """Copy the first ``count`` rows of every layer from ``old`` (incremental builds),
        once the files are laid out (at the first write, or at commit)."""
        self._copy = (old, count)
        if self.files is not None:
            self._copy_now(old, count)

    def _copy_now(self, old: IndexReader, count: int, chunk: int = 256) -> None:
        for file, rows in self.scores.items():
            source = old.scores(self.names[file])
            for start in range(0, count, chunk):
                end = min(start + chunk, count)
                rows[start:end] = source[start:end]

    def commit(self, partial: Partial, manifest: dict[str, Any]) -> int:
        """Write the partial and the manifest, then make this generation the served one.

        Returns the generation's size in bytes.
        """
        if self.files is None:  # no batch written (every new image skipped): a file a layer
            self._open(list(range(len(self.names))))
        for memmap in self.scores.values():
            memmap.flush()
        self.scores.clear()
        for file in sorted(set(self.files or ())):
            _save_layer(self.folder / f"layer-{file}.npz", partial.layers[self.names[file]])
        size = _dir_size(self.folder)
        manifest = {**manifest, "layers": self.names, "files": self.files, "bytes": size}
        manifest["generation"] = self.folder.name
        (self.folder / "manifest.json").write_text(json.dumps(manifest))
        for path in self.folder.iterdir():
            with path.open("rb+") as f:
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(self.folder)
        old = read_current(self.base)
        atomic_write(self.base / "CURRENT", self.folder.name.encode())
        if old is not None and old != self.folder.name:
            # Readers that already opened the old files keep them (POSIX unlink semantics).
            shutil.rmtree(self.base / old, ignore_errors=True)
        return size

    def abort(self) -> None:
        self.scores.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def read_current(base: Path) -> str | None:
    try:
        name = (base / "CURRENT").read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return name if name.startswith("gen-") and "/" not in name else None


def remove_stale_staging(base: Path) -> None:
    """Generation folders that are not CURRENT and older than a day: crashed builds."""
    current = read_current(base)
    now = time.time()
    for folder in base.glob("gen-*"):
        if folder.name != current:
            with contextlib.suppress(OSError):
                if now - folder.stat().st_mtime > STALE_STAGING_SECONDS:
                    shutil.rmtree(folder, ignore_errors=True)


def _save_layer(path: Path, layer: LayerPartial) -> None:
    # Uncompressed: compressing the mostly-zero histograms of EfficientNet-Lite0's 105,888
    # channels took as long as indexing 32 images; they are stored as int32 instead.
    with path.open("wb") as f:
        np.savez(
            f,
            shape=np.array([layer.channels, layer.height, layer.width], np.int64),
            count=np.array(layer.count, np.int64),
            top_max_score=layer.top_max.score,
            top_max_image=layer.top_max.image,
            top_max_pos=layer.top_max.pos,
            top_mean_score=layer.top_mean.score,
            top_mean_image=layer.top_mean.image,
            top_mean_pos=layer.top_mean.pos,
            total=layer.total,
            total_sq=layer.total_sq,
            max=layer.max,
            nonpos=layer.nonpos,
            mean_sum=layer.mean_sum,
            mean_sq=layer.mean_sq,
            hist=layer.hist.astype(np.int32),  # counts of images
        )


def _load_layer(path: Path) -> LayerPartial:
    with np.load(path) as z:
        _, height, width = (int(v) for v in z["shape"])
        return LayerPartial(
            height=height,
            width=width,
            top_max=TopK(z["top_max_score"], z["top_max_image"], z["top_max_pos"]),
            top_mean=TopK(z["top_mean_score"], z["top_mean_image"], z["top_mean_pos"]),
            count=int(z["count"]),
            total=z["total"],
            total_sq=z["total_sq"],
            max=z["max"],
            nonpos=z["nonpos"],
            mean_sum=z["mean_sum"],
            mean_sq=z["mean_sq"],
            hist=z["hist"].astype(np.int64),
        )


@dataclass
class IndexReader:
    """The served generation of one (collection, model key), read lazily and cached."""

    folder: Path
    manifest: dict[str, Any]

    def __post_init__(self) -> None:
        names = self.manifest["layers"]
        # each layer's file number (layers with one output share files); older: one a layer
        files = self.manifest.get("files") or list(range(len(names)))
        self._position = {name: int(file) for name, file in zip(names, files, strict=True)}
        self._lock = threading.Lock()
        self._layers: OrderedDict[str, LayerPartial] = OrderedDict()
        self._scores: dict[int, npt.NDArray[np.float16]] = {}
        self._rows: dict[str, int] | None = None

    @property
    def images(self) -> list[str]:
        return list(self.manifest["images"])

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    def position(self, image_id: str) -> int | None:
        """The image's row in the scores, or None when it is not in the index."""
        with self._lock:
            if self._rows is None:
                self._rows = {image: i for i, image in enumerate(self.manifest["images"])}
            return self._rows.get(image_id)

    def covers(self, layer: str) -> bool:
        return layer in self._position

    def layer(self, name: str) -> LayerPartial:
        with self._lock:
            found = self._layers.get(name)
            if found is not None:
                self._layers.move_to_end(name)
                return found
        loaded = _load_layer(self.folder / f"layer-{self._position[name]}.npz")
        with self._lock:
            self._layers[name] = loaded
            while len(self._layers) > 64:
                self._layers.popitem(last=False)
        return loaded

    def scores(self, name: str) -> npt.NDArray[np.float16]:
        """``float16[N, 2, C]`` memory map: per image, the channel's spatial max and mean."""
        with self._lock:
            file = self._position[name]
            found = self._scores.get(file)
            if found is None:
                found = np.load(self.folder / f"scores-{file}.npy", mmap_mode="r")
                self._scores[file] = found
            return found

    def partial(self) -> Partial:
        return Partial(self.k, {name: self.layer(name) for name in self.manifest["layers"]})


def open_current(base: Path) -> IndexReader | None:
    """The served index under ``base``, or None (never built, or removed meanwhile)."""
    name = read_current(base)
    if name is None:
        return None
    folder = base / name
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return IndexReader(folder, manifest)
