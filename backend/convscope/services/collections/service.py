"""Collections and their indexes, composed: store, ingest, index job, examples, statistics.

:class:`Collections` is what the facade delegates to. It owns the collection store, the
receptive-field memo, a cache of open indexes and a byte cache of drawn examples; the index
job runs on the facade's one job manager. The job body is :meth:`Collections.build`: a
plain loop of decode -> preprocess -> :meth:`stream.IndexStream.add` (one forward pass,
folded into the running partial in place), whose per-image scores stream to disk
(:class:`indexfiles.IndexWriter`).

Over 300 lines: the one service object of the collections capability (create, add,
index as a job, read examples and statistics); the pieces it composes are in their own
modules (store, ingest, index, indexfiles, examples).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from convscope.errors import (
    CollectionPathError,
    ConvscopeError,
    EmptyCollectionError,
    IndexNotFoundError,
    InvalidParameterError,
    JobNotFinishedError,
    LayerNotIndexedError,
    NotSpatialLayerError,
    UnknownCollectionError,
    UnknownImageError,
)
from convscope.render import encode
from convscope.services.collections import builtin, indexfiles
from convscope.services.collections import examples as ex
from convscope.services.collections.ingest import (
    Item,
    Limits,
    Member,
    Skip,
    from_archive,
    from_files,
    from_folder,
    resolve_folder,
)
from convscope.services.collections.store import Collection, CollectionStore
from convscope.services.collections.stream import IndexStream
from convscope.services.compute.jobs import JobContext, JobRunner, JobSpec, JobStatus, cache_key
from convscope.services.models.hooks import LayerTap, eval_mode
from convscope.services.models.receptive import ReceptiveFields
from convscope.services.models.registry import LoadedModel, ModelRegistry
from convscope.services.rendered import JSON, NPY, PNG, Rendered
from convscope.services.storage.cache import ByteLRU
from convscope.services.storage.images import ImageStore

log = logging.getLogger(__name__)

MAX_K = 64
BATCH = 8  # images a forward: 16 images' maps outgrow a 32 MiB cache (bench.collections)
INDEX_JOB = "collection-index"  # the JobSpec kind of Collections.index


@dataclass(frozen=True)
class IndexRequest:
    layers: tuple[str, ...] = ()  # empty: every module with a spatial output
    k: int = 16


def spatial_layers(model: LoadedModel) -> list[str]:
    """Every module whose output is ``[C, H, W]`` with H * W > 1, in forward order."""
    return [
        info.name
        for info in model.layers
        if info.name != "output"
        and info.output_shape is not None
        and len(info.output_shape) == 3
        and info.output_shape[1] * info.output_shape[2] > 1
    ]


class Collections:
    """Named image collections and their per-model indexes."""

    def __init__(
        self,
        data_dir: Path,
        registry: ModelRegistry,
        images: ImageStore,
        jobs: JobRunner,
        *,
        roots: list[Path],
        limits: Limits,
        builtin_collection: bool = True,
        render_bytes: int = 32 * 1024**2,
    ) -> None:
        self.store = CollectionStore(data_dir)
        self.registry = registry
        self.images = images
        self.jobs = jobs
        self.roots = roots
        self.limits = limits
        self.builtin_collection = builtin_collection
        self.fields = ReceptiveFields()
        self.drawn: ByteLRU[Rendered] = ByteLRU(render_bytes, lambda r: r.nbytes)
        self._lock = threading.Lock()
        self._readers: dict[Path, indexfiles.IndexReader] = {}
        self._model_keys: dict[tuple[str, int], str] = {}

    # -- collections ------------------------------------------------------------------

    def _ensure_builtin(self) -> None:
        marker = self.store.root / ".builtin-created"
        if not self.builtin_collection or marker.exists():
            return
        with self._lock:
            if marker.exists():
                return
            collection = self.store.create(builtin.NAME, {"builtin": "true"})
            ids = []
            for name, data in builtin.photos():
                try:
                    ids.append(self.images.put(data, name)[0].id)
                except ConvscopeError as exc:
                    log.warning("built-in photo %s refused: %s", name, exc.detail)
            self.store.add(collection.id, ids)
            marker.write_text(collection.id)

    def list_all(self) -> list[dict[str, Any]]:
        self._ensure_builtin()
        return [c.summary() for c in self.store.list_all()]

    def roots_listing(self) -> list[dict[str, str]]:
        return [{"name": root.name} for root in self.roots]

    def create(self, name: str, root: str | None = None, path: str | None = None) -> Collection:
        if root is None and path is None:
            return self.store.create(name)
        folder = resolve_folder(self.roots, root or "", path or "")
        collection = self.store.create(name, {"root": root or "", "path": path or ""})
        try:
            self._ingest(collection.id, from_folder(folder, self.limits))
        except BaseException:
            self.store.delete(collection.id)
            raise
        return self.store.get(collection.id)

    def import_folder(self, name: str, folder: Path) -> dict[str, Any]:
        """A collection of a local folder (trusted caller: no allow-list)."""
        if not folder.is_dir():
            raise CollectionPathError(f"{str(folder)!r} is not a folder")
        collection = self.store.create(name, {"root": "", "path": str(folder)})
        try:
            result = self._ingest(collection.id, from_folder(folder, self.limits))
        except BaseException:
            self.store.delete(collection.id)
            raise
        return {**self.store.get(collection.id).summary(), "skipped": result["skipped"]}

    def find(self, id_or_name: str) -> str:
        self._ensure_builtin()
        for c in self.store.list_all():
            if id_or_name in (c.id, c.name):
                return c.id
        raise UnknownCollectionError(id_or_name)

    def describe(self, cid: str) -> dict[str, Any]:
        collection = self.store.get(cid)
        indexes = []
        for base in sorted((self.store.folder(cid) / "indexes").glob("*")):
            reader = indexfiles.open_current(base)
            if reader is not None:
                m = reader.manifest
                indexes.append(
                    {
                        "model": m["model"],
                        "key": base.name,
                        "images": len(m["images"]),
                        "layers": len(m["layers"]),
                        "k": m["k"],
                        "bytes": m["bytes"],
                        "built": m["built"],
                    }
                )
        return {**collection.summary(), "images": collection.images, "indexes": indexes}

    def delete(self, cid: str) -> None:
        self.store.delete(cid)

    def add_files(self, cid: str, files: list[tuple[str, BinaryIO]]) -> dict[str, Any]:
        self.store.get(cid)
        return self._ingest(cid, from_files(files, self.limits))

    def add_archive(self, cid: str, name: str, stream: BinaryIO) -> dict[str, Any]:
        self.store.get(cid)
        return self._ingest(cid, from_archive(name, stream, self.limits))

    def _ingest(self, cid: str, items: Iterable[Item]) -> dict[str, Any]:
        """Store every image member; the collection is extended only if all went through."""
        ids: list[str] = []
        skipped: list[dict[str, str]] = []
        for item in items:
            if isinstance(item, Skip):
                skipped.append({"name": item.name, "reason": item.reason})
                continue
            assert isinstance(item, Member)
            try:
                record, _ = self.images.put(item.data, Path(item.name).name)
            except ConvscopeError as exc:
                skipped.append({"name": item.name, "reason": f"{exc.code}: {exc.detail}"})
                continue
            ids.append(record.id)
        added, duplicates = self.store.add(cid, ids)
        return {
            "added": len(added),
            "duplicates": len(duplicates),
            "skipped": skipped,
            "images": added,
        }

    # -- indexes ------------------------------------------------------------------------

    def model_key(self, model: LoadedModel) -> str:
        """Hash of the model's name, parameters and buffers (their bytes) and preprocessing."""
        memo = (model.name, id(model.module))
        found = self._model_keys.get(memo)
        if found is not None:
            return found
        digest = hashlib.sha256(model.name.encode())
        for name, tensor in [*model.module.state_dict().items()]:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        digest.update(json.dumps(model.spec.preprocessing.as_dict(), sort_keys=True).encode())
        key = digest.hexdigest()[:32]
        self._model_keys[memo] = key
        return key

    def _base(self, cid: str, model: LoadedModel) -> Path:
        return self.store.folder(cid) / "indexes" / self.model_key(model)

    def _check_layers(self, model: LoadedModel, layers: Iterable[str]) -> list[str]:
        spatial = set(spatial_layers(model))
        out = []
        for layer in layers:
            info = model.layer(layer)
            if layer not in spatial:
                raise NotSpatialLayerError(model.name, layer, info.output_shape)
            out.append(layer)
        return list(dict.fromkeys(out))

    def index(self, model_name: str, cid: str, request: IndexRequest) -> JobStatus:
        """Submit the index job (or return the equal one already queued, running or done)."""
        model = self.registry.get(model_name)
        collection = self.store.get(cid)
        if not collection.images:
            raise EmptyCollectionError(cid)
        if not 1 <= request.k <= MAX_K:
            raise InvalidParameterError("k", f"expected 1 to {MAX_K}, got {request.k}")
        layers = self._check_layers(model, request.layers) if request.layers else None
        base = self._base(cid, model)
        key = cache_key(
            kind="collection-index",
            collection=cid,
            model=self.model_key(model),
            layers=layers,
            k=request.k,
            current=indexfiles.read_current(base),
            images=hashlib.sha256("\n".join(collection.images).encode()).hexdigest(),
        )
        chosen = layers or spatial_layers(model)

        def work(ctx: JobContext) -> bytes:
            summary = self.build(model, cid, chosen, request.k, ctx.progress)
            return json.dumps(summary).encode()

        # On a cluster the job is rebuilt from this spec (services/cluster/worker.py).
        spec = JobSpec(
            INDEX_JOB, {"model": model_name, "collection": cid, "layers": chosen, "k": request.k}
        )
        return self.jobs.submit(
            key, work, total=len(collection.images), label=f"index {collection.name}", spec=spec
        )

    def index_now(
        self,
        model_name: str,
        cid: str,
        request: IndexRequest,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """What the index job does, in this thread (the CLI)."""
        model = self.registry.get(model_name)
        if not self.store.get(cid).images:
            raise EmptyCollectionError(cid)
        layers = self._check_layers(model, request.layers) if request.layers else None
        return self.build(model, cid, layers or spatial_layers(model), request.k, progress)

    @staticmethod
    def summary_of(result: bytes, job_id: str) -> dict[str, Any]:
        """An index job's JSON summary (a job of another kind has a PNG: 409)."""
        try:
            summary = json.loads(result)
        except ValueError:
            raise JobNotFinishedError(job_id, "not an index job") from None
        if not isinstance(summary, dict):
            raise JobNotFinishedError(job_id, "not an index job")
        return summary

    def build(
        self,
        model: LoadedModel,
        cid: str,
        layers: list[str],
        k: int,
        progress: Callable[[int, int], None] | None = None,
        batch_size: int = BATCH,
    ) -> dict[str, Any]:
        """Index the collection's images not in the served index yet (all of them when the
        served index has other layers or ``k``); swap the result in atomically.

        Returns the summary: images indexed in all, new ones, skipped ones, bytes on disk.
        """
        started = time.perf_counter()
        base = self._base(cid, model)
        collection = self.store.get(cid)
        shapes = {name: _shape(model, name) for name in layers}
        old = indexfiles.open_current(base)
        reuse = (
            old is not None
            and old.manifest["layers"] == layers
            and int(old.manifest["k"]) == k
            and old.manifest.get("model") == model.name
        )
        indexed = old.images if reuse and old is not None else []
        known = set(indexed)
        todo = [i for i in collection.images if i not in known]
        skipped: list[dict[str, str]] = []
        present = []
        for image_id in todo:
            try:
                self.images.record(image_id)
                present.append(image_id)
            except UnknownImageError:
                skipped.append({"name": image_id, "reason": "evicted from the image store"})
        summary: dict[str, Any] = {
            "collection": cid,
            "model": model.name,
            "layers": len(layers),
            "incremental": reuse,
            "new": 0,
            "skipped": skipped,
        }
        if reuse and old is not None and not present:
            return {**summary, "images": len(indexed), "bytes": old.manifest["bytes"]}
        if not indexed and not present:
            raise EmptyCollectionError(cid)
        writer = indexfiles.IndexWriter(base, shapes, len(indexed) + len(present))
        try:
            begin = None
            if reuse and old is not None:
                begin = old.partial()
                writer.copy_scores(old, len(indexed))
            targets = {name: model.submodule(name) for name in layers}
            stream = IndexStream(model.module, targets, k, begin, first=len(indexed))
            done: list[str] = list(indexed)
            total = len(present)
            for start in range(0, total, batch_size):
                if not (self.store.folder(cid) / "collection.json").is_file():
                    raise UnknownCollectionError(cid)  # deleted while indexing
                ids, x = self._load_batch(model, present[start : start + batch_size], skipped)
                if ids:
                    with model.lock:
                        scores = stream.add(x)
                    writer.write_scores(len(done), scores)
                    done.extend(ids)
                if progress is not None:
                    progress(min(start + batch_size, total), total)
            if not done:
                raise EmptyCollectionError(cid)
            partial = stream.partial()
            if not (self.store.folder(cid) / "collection.json").is_file():
                raise UnknownCollectionError(cid)
            manifest = {
                "model": model.name,
                "weights": model.spec.weights,
                "preprocessing": model.spec.preprocessing.as_dict(),
                "k": k,
                "images": done,
                "built": time.time(),
            }
            size = writer.commit(partial, manifest)
        except BaseException:
            writer.abort()
            raise
        return {
            **summary,
            "images": len(done),
            "new": len(done) - len(indexed),
            "bytes": size,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def _load_batch(
        self, model: LoadedModel, ids: list[str], skipped: list[dict[str, str]]
    ) -> tuple[list[str], torch.Tensor]:
        ok, tensors = [], []
        for image_id in ids:
            try:
                _, image = self.images.open(image_id)
            except ConvscopeError as exc:
                skipped.append({"name": image_id, "reason": f"{exc.code}: {exc.detail}"})
                continue
            tensors.append(model.spec.preprocessing(image))
            ok.append(image_id)
        x = torch.stack(tensors).to(model.device) if tensors else torch.empty(0)
        return ok, x

    def reader(self, model: LoadedModel, cid: str) -> indexfiles.IndexReader:
        self.store.get(cid)
        base = self._base(cid, model)
        generation = indexfiles.read_current(base)
        if generation is None:
            raise IndexNotFoundError(model.name, cid)
        folder = base / generation
        with self._lock:
            found = self._readers.get(folder)
        if found is not None:
            return found
        opened = indexfiles.open_current(base)
        if opened is None:
            raise IndexNotFoundError(model.name, cid)
        with self._lock:
            self._readers = {p: r for p, r in self._readers.items() if p.parent != base}
            self._readers[opened.folder] = opened
        return opened

    def _indexed_layer(self, model: LoadedModel, cid: str, layer: str) -> Any:
        model.layer(layer)
        reader = self.reader(model, cid)
        if not reader.covers(layer):
            raise LayerNotIndexedError(model.name, cid, layer)
        return reader, reader.layer(layer)

    # -- reading ------------------------------------------------------------------------

    def examples(
        self,
        model_name: str,
        cid: str,
        layer: str,
        channel: int,
        k: int,
        by: ex.By,
        fmt: str,
        show: ex.Show = "patch",
        rank: int | None = None,
    ) -> Rendered:
        """The top ``k`` examples (or only the one at ``rank``) as JSON or a PNG drawing."""
        model = self.registry.get(model_name)
        reader, partial = self._indexed_layer(model, cid, layer)
        if not 0 <= channel < partial.channels:
            raise InvalidParameterError(
                "channel", f"expected 0 to {partial.channels - 1} for {layer!r}, got {channel}"
            )
        if k > reader.k:
            raise InvalidParameterError(
                "k", f"the index keeps the top {reader.k}; expected k <= {reader.k}, got {k}"
            )
        if rank is not None and not 0 <= rank < k:
            raise InvalidParameterError("rank", f"expected 0 to {k - 1}, got {rank}")
        key = (str(reader.folder), layer, channel, k, by, fmt, show, rank)
        cached = self.drawn.get(key)
        if cached is not None:
            return cached
        boxes = self.fields.get(model, layer)
        found = ex.examples(partial, reader.images, channel, k, by, boxes)
        if rank is not None:
            found = found[rank : rank + 1]
        if fmt == "json":
            out = Rendered(encode.json(found), JSON)
        else:
            out = Rendered(self._draw(model, layer, channel, found, show), PNG)
        self.drawn.put(key, out)
        return out

    def _draw(
        self,
        model: LoadedModel,
        layer: str,
        channel: int,
        found: list[dict[str, Any]],
        show: ex.Show,
    ) -> bytes:
        tiles = []
        for entry in found:
            try:
                _, image = self.images.open(entry["image_id"])
            except UnknownImageError:
                size = model.spec.preprocessing.input_size
                blank = (ex.TILE, ex.TILE) if show == "patch" else size
                tiles.append(torch.ones(3, *blank))  # evicted from the image store since
                continue
            view = model.spec.preprocessing.view(image)
            if show == "patch":
                tiles.append(ex.patch(view, entry["box"]))
            else:
                heat = self._channel_map(model, view, layer, channel) if show == "overlay" else None
                tiles.append(ex.whole(view, entry["box"], heat))
        if not tiles:
            tiles = [torch.ones(3, ex.TILE, ex.TILE)]
        return ex.grid_png(tiles, ncol=None if show == "patch" else min(3, len(tiles)))

    def _channel_map(
        self, model: LoadedModel, view: torch.Tensor, layer: str, channel: int
    ) -> torch.Tensor:
        x = model.spec.preprocessing.standardize(view)[None].to(model.device)
        with (
            model.lock,
            eval_mode(model.module),
            torch.no_grad(),
            LayerTap(model.module, [layer], model.name) as tap,
        ):
            outputs, _ = tap.run(x)
        return outputs[layer][0, channel].detach().float().cpu()

    def stats(self, model_name: str, cid: str, layer: str, fmt: str) -> Rendered:
        model = self.registry.get(model_name)
        reader, partial = self._indexed_layer(model, cid, layer)
        if fmt == "npy":
            headers = {
                "X-Convscope-Columns": ",".join(ex.STAT_COLUMNS) + ",histogram...",
                "X-Convscope-Images": str(partial.count),
            }
            return Rendered(encode.npy(ex.stats_array(partial)), NPY, headers)
        payload = ex.stats_json(layer, partial)
        payload["collection"] = cid
        payload["index_bytes"] = reader.manifest["bytes"]
        return Rendered(encode.json(payload), JSON)

    def zscores(
        self, model_name: str, cid: str, layer: str, image_id: str, means: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """z-scores of an image's per-channel means against the collection.

        An image in the index is a look-up of its stored scores; any other image uses
        ``means`` (``float[C]``, computed by the caller).
        """
        model = self.registry.get(model_name)
        reader, partial = self._indexed_layer(model, cid, layer)
        position = reader.position(image_id)
        source = "computed"
        if position is not None:
            means = np.asarray(reader.scores(layer)[position, 1], np.float64)
            source = "index"
        z = ex.zscores(means, partial)
        return z, {"collection": cid, "images": partial.count, "source": source}


def _shape(model: LoadedModel, layer: str) -> tuple[int, int, int]:
    shape = model.layer(layer).output_shape
    if shape is None or len(shape) != 3:
        raise NotSpatialLayerError(model.name, layer, shape)
    return int(shape[0]), int(shape[1]), int(shape[2])
