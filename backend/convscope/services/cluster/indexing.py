"""Collection indexing on Ray Data: the same map and merge as the one-process index.

The collection's ordered image ids are cut into batches (``first`` = the position of a
batch's first image, exactly as the one-process build numbers them); Ray Data streams the
batches through an actor pool (:class:`IndexActor`: one model copy per actor, built from the
same registry and settings, reading the images from the shared store, on a GPU when the
actors ask for one). Each actor runs :func:`collections.index.map_batch` and returns the
batch's partial and scores; the driver folds them with :func:`collections.index.merge`,
which is associative and commutative, so the arrival order does not matter.

Nothing is served until every batch is back: :func:`index_on_ray` raises
:class:`IncompleteIndexError` when images are missing, and :func:`write_index` commits the
generation atomically only after that check. A killed actor is restarted by Ray Data and its
batch retried; when retries run out the run raises, and the served index stays the old one.

On 2 cores: fractional CPUs per actor and one actor (two one-CPU actors starved the reader
and deadlocked); on N GPUs: ``actors=N, gpus=1`` (see docs/performance.md).

A node that joins mid-run: Ray Data 2.60 sizes a run by what its cluster-wide autoscaling
coordinator (a detached actor) has reserved for it, and that actor re-reads the node list only
on its 20 s tick; a run shorter than that never saw the new node (what an earlier session
observed). :class:`_NodeWatch` asks the coordinator to re-read the nodes as soon as the
cluster's CPUs or GPUs grow, so the pool gets the budget for one more actor (up to
``max_actors``) within about a second, and Ray places it where the free resources are.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from convscope.config import Settings
from convscope.errors import (
    CancelledError,
    ConvscopeError,
    EmptyCollectionError,
    UnknownCollectionError,
    UnknownImageError,
)
from convscope.services.cluster.jobs import connect
from convscope.services.collections import indexfiles
from convscope.services.collections.index import Partial, Scores, empty, merge
from convscope.services.collections.service import BATCH, Collections
from convscope.services.collections.stream import map_batch
from convscope.services.compute.runtime import configure_threads
from convscope.services.models.registry import LoadedModel, ModelRegistry
from convscope.services.storage.images import ImageStore

log = logging.getLogger(__name__)


class IncompleteIndexError(ConvscopeError):
    """A distributed index run came back without some images: nothing is committed."""

    code = "index_incomplete"


@dataclass(frozen=True)
class RayIndexOptions:
    """How the actor pool is sized: ``actors`` to ``max_actors`` actors (the pool grows onto
    nodes that join mid-run), each with ``cpus`` CPUs and ``gpus`` GPUs."""

    batch_size: int = BATCH  # as the one-process build: the same forwards, the same sums
    actors: int = 1
    max_actors: int = 1
    cpus: float = 0.5
    gpus: float = 0.0
    max_restarts: int = 2  # per actor: a killed actor comes back and its batch is retried


@dataclass
class RayIndex:
    """What a run produced: the merged partial, every batch's scores, and who worked."""

    partial: Partial
    scores: list[tuple[int, dict[str, Scores]]] = field(default_factory=list)
    batches_per_node: dict[str, int] = field(default_factory=dict)


class IndexActor:
    """One model copy in a Ray Data actor: maps batches of image ids to partials."""

    def __init__(self, settings: Settings, model_name: str, layers: list[str], k: int) -> None:
        configure_threads(settings.torch_threads)
        self.registry = ModelRegistry(settings)
        self.model = self.registry.get(model_name)
        self.images = ImageStore(
            settings.data_dir,
            max_images=settings.max_images,
            max_bytes=settings.max_image_store_bytes,
            max_pixels=settings.max_image_pixels,
        )
        self.targets = {name: self.model.submodule(name) for name in layers}
        self.k = k
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for first, ids in zip(batch["first"], batch["ids"], strict=True):
            pre = self.model.spec.preprocessing
            x = torch.stack([pre(self.images.open(str(i))[1]) for i in ids])
            with self.model.lock:
                part, scores = map_batch(self.model.module, self.targets, x, int(first), self.k)
            results.append(pickle.dumps((part, scores), protocol=pickle.HIGHEST_PROTOCOL))
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {
            "first": np.asarray(batch["first"]),
            "result": out,
            "node": np.asarray([self.node] * len(results)),
        }


COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")  # Ray Data's (name, namespace)


class _NodeWatch:
    """While a run lasts: when the cluster's CPUs or GPUs grow, make Ray Data's autoscaling
    coordinator re-read the nodes now rather than at its next 20 s tick."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="convscope-node-watch", daemon=True)

    def __enter__(self) -> _NodeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @staticmethod
    def _size() -> tuple[float, float]:
        total = ray.cluster_resources()
        return float(total.get("CPU", 0)), float(total.get("GPU", 0))

    def _run(self) -> None:
        try:
            seen = self._size()
            while not self._stop.wait(self.every):
                now = self._size()
                if now[0] > seen[0] or now[1] > seen[1]:
                    log.info("the cluster grew to %s CPUs, %s GPUs: re-reading the nodes", *now)
                    name, namespace = COORDINATOR
                    coordinator = ray.get_actor(name, namespace=namespace)
                    # Unknown requester: it only ticks (re-reads nodes, re-reserves).
                    ray.get(
                        coordinator.get_reserved_resources.remote("convscope", recompute=True),
                        timeout=30,
                    )
                seen = now
        except Exception:  # a Ray Data without that actor: the pool grows on its own tick
            log.warning("could not tell Ray Data that the cluster grew", exc_info=True)


def index_on_ray(
    settings: Settings,
    model_name: str,
    image_ids: list[str],
    shapes: dict[str, tuple[int, int, int]],
    k: int,
    options: RayIndexOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> RayIndex:
    """Index ``image_ids`` (in this order) on ``shapes``' layers with top-``k``, on the
    cluster at ``settings.ray_address``. Every image must be in the shared image store."""
    options = options or RayIndexOptions()
    connect(settings)
    size = options.batch_size
    rows = [{"first": s, "ids": image_ids[s : s + size]} for s in range(0, len(image_ids), size)]
    context = ray.data.DataContext.get_current()
    # Grow the pool as soon as every actor is busy and batches wait (the default, 1.75, waits
    # for a backlog of queued tasks per actor): a node that joins mid-run takes work at once.
    context.autoscaling_config.actor_pool_util_upscaling_threshold = 1.0
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    mapped = dataset.map_batches(
        IndexActor,
        fn_constructor_kwargs={
            "settings": settings,
            "model_name": model_name,
            "layers": list(shapes),
            "k": k,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=options.actors, max_size=options.max_actors),
        num_cpus=options.cpus,
        num_gpus=options.gpus,
        max_restarts=options.max_restarts,
        max_task_retries=options.max_restarts,
    )
    result = RayIndex(empty(shapes, k))
    firsts: set[int] = set()
    done = 0
    with _NodeWatch():  # a node that joins mid-run takes batches
        for row in mapped.iter_rows():
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"indexing cancelled after {done} of {len(image_ids)} images")
            part, scores = pickle.loads(row["result"])
            first = int(row["first"])
            if first in firsts:
                continue  # a retried batch that was delivered twice: merge it once
            firsts.add(first)
            result.partial = merge(result.partial, part)
            result.scores.append((first, scores))
            node = str(row["node"])
            result.batches_per_node[node] = result.batches_per_node.get(node, 0) + 1
            done += next(iter(scores.values())).max.shape[0] if scores else 0
            if progress is not None:
                progress(done, len(image_ids))
    counts = {layer.count for layer in result.partial.layers.values()}
    if firsts != {row["first"] for row in rows} or counts != {len(image_ids)}:
        raise IncompleteIndexError(
            f"expected {len(image_ids)} images in {len(rows)} batches, got {sorted(counts)} "
            f"in {len(firsts)}; nothing was committed"
        )
    result.scores.sort(key=lambda item: item[0])
    return result


def write_index(
    base: Path,
    shapes: dict[str, tuple[int, int, int]],
    index: RayIndex,
    image_ids: list[str],
    manifest: dict[str, Any],
) -> int:
    """Commit a complete :class:`RayIndex` of ``image_ids`` as the served generation under
    ``base`` (the same files as the one-process build); returns its size in bytes.
    ``manifest`` adds the model's fields (``model``, ``weights``, ``preprocessing``)."""
    counts = {layer.count for layer in index.partial.layers.values()}
    if counts != {len(image_ids)}:
        raise IncompleteIndexError(
            f"expected an index of {len(image_ids)} images, got {sorted(counts)}; "
            "nothing was committed"
        )
    writer = indexfiles.IndexWriter(base, shapes, len(image_ids))
    try:
        for first, scores in index.scores:
            writer.write_scores(first, scores)
        full = {**manifest, "k": index.partial.k, "images": image_ids, "built": time.time()}
        return writer.commit(index.partial, full)
    except BaseException:
        writer.abort()
        raise


MAX_JOB_ACTORS = 8  # an index job's pool: up to this many actors, as the cluster allows


def build_on_ray(
    settings: Settings,
    collections: Collections,
    model: LoadedModel,
    cid: str,
    layers: list[str],
    k: int,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """What ``Collections.build`` does, on Ray Data: index every image of the collection
    still in the store (the whole index, never incremental) and commit it atomically;
    returns the same summary. Runs inside a Ray task (the index job): the pool's actors
    declare the job's CPUs and GPUs (``ray_job_cpus``, ``ray_job_gpus``), one actor at first,
    up to :data:`MAX_JOB_ACTORS` as nodes join."""
    started = time.perf_counter()
    collection = collections.store.get(cid)
    shapes: dict[str, tuple[int, int, int]] = {}
    for name in layers:
        shape = list(model.layer(name).output_shape or ())  # [C, H, W]: checked at submit
        shapes[name] = (int(shape[0]), int(shape[1]), int(shape[2]))
    present: list[str] = []
    skipped: list[dict[str, str]] = []
    for image_id in collection.images:
        try:
            collections.images.record(image_id)
            present.append(image_id)
        except UnknownImageError:
            skipped.append({"name": image_id, "reason": "evicted from the image store"})
    if not present:
        raise EmptyCollectionError(cid)
    batches = -(-len(present) // RayIndexOptions.batch_size)
    options = RayIndexOptions(
        max_actors=max(1, min(MAX_JOB_ACTORS, batches)),
        cpus=settings.ray_job_cpus,
        gpus=settings.ray_job_gpus,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False  # no bars in job logs
    index = index_on_ray(
        settings, model.name, present, shapes, k, options, progress=progress, cancel=cancel
    )
    folder = collections.store.folder(cid)
    if not (folder / "collection.json").is_file():
        raise UnknownCollectionError(cid)  # deleted while indexing
    manifest = {
        "model": model.name,
        "weights": model.spec.weights,
        "preprocessing": model.spec.preprocessing.as_dict(),
    }
    size = write_index(
        folder / "indexes" / collections.model_key(model), shapes, index, present, manifest
    )
    return {
        "collection": cid,
        "model": model.name,
        "layers": len(layers),
        "incremental": False,
        "new": len(present),
        "skipped": skipped,
        "images": len(present),
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 3),
        "nodes": index.batches_per_node,
    }
