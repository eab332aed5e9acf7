"""The one door: ``Convscope`` is the only object routes, the CLI and metrics talk to.

It owns the registry, the image store, the model store, the compute gate, the job manager and
the capability services (``inspection``, ``optvis``, ``attribution``), and exposes each
operation as one method, plus a :meth:`Convscope.stats` snapshot for metrics. A plain class
with no module-level state, so a serving framework can wrap it as a replica.

Over 300 lines: the one door, one short method per operation of every capability; each
method only hands over to the capability's service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from convscope.config import Settings
from convscope.render import colormap, overlay
from convscope.services.attribution.methods import CamMethod, SaliencyMethod
from convscope.services.attribution.views import Attributions
from convscope.services.collections.ingest import Limits as CollectionLimits
from convscope.services.collections.service import Collections, IndexRequest
from convscope.services.compute.gate import ComputeGate
from convscope.services.compute.jobs import JobManager, JobRunner, JobStatus
from convscope.services.compute.runtime import (
    configure_threads,
    freeze_heap,
    release_free_memory,
    release_library_pages,
    share_cores,
    tune_allocator,
)
from convscope.services.inspection.drawing import GridBounds
from convscope.services.inspection.filters import FilterGrid, FilterView
from convscope.services.inspection.inspector import Inspector
from convscope.services.inspection.maps import Format, MapView
from convscope.services.models import convert
from convscope.services.models.registry import LoadedModel, ModelRegistry
from convscope.services.models.uploads import ModelStore
from convscope.services.optvis.optimize import DreamSettings
from convscope.services.optvis.runs import FeatureVisualizer, OptimizeRequest
from convscope.services.rendered import Rendered
from convscope.services.storage import retention
from convscope.services.storage.images import ImageRecord, ImageStore
from convscope.services.weights.views import WeightViews

log = logging.getLogger(__name__)

__all__ = ["Convscope", "FilterGrid", "FilterView", "Format", "MapView", "Stats"]


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    bytes: int


@dataclass(frozen=True)
class Stats:
    """What metrics read, in one snapshot."""

    compute_running: int
    compute_queued: int
    compute_slots: int
    compute_queue_limit: int
    compute_rejected: int
    caches: dict[str, CacheStats]
    jobs: dict[str, int]
    model_load_failures: int
    models_loaded: int
    models_unavailable: int


def _job_runner(settings: Settings, local: JobManager) -> JobRunner:
    """This process's job manager, or, with ``ray_address`` set, the cluster's job table
    (``services/cluster``; Ray is imported only then)."""
    if not settings.ray_address:
        return local
    from convscope.services.cluster.jobs import RayJobManager

    return RayJobManager(settings, local)


class Convscope:
    """The service: models, images, and every view of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        threads = configure_threads(settings.torch_threads)
        tune_allocator(arenas=threads)
        self.registry = ModelRegistry(settings)
        self.images = ImageStore(
            settings.data_dir,
            max_images=settings.max_images,
            max_bytes=settings.max_image_store_bytes,
            max_pixels=settings.max_image_pixels,
        )
        self.gate = ComputeGate(
            settings.max_concurrent_compute, settings.max_queue, on_enter=share_cores(threads)
        )
        self.jobs: JobRunner = _job_runner(
            settings,
            JobManager(
                settings.max_running_jobs,
                settings.max_queued_jobs,
                results_dir=settings.data_dir / "results",
                preview_encoder=lambda t: overlay.images_png(t.clamp(0, 1)),
            ),
        )
        self.inspector = Inspector(
            self.registry,
            self.images,
            self.gate,
            GridBounds(settings.max_scale, settings.max_grid_pixels, settings.max_json_floats),
            capture_bytes=settings.activation_cache_bytes,
            render_bytes=settings.render_cache_bytes,
            max_image_pixels=settings.max_image_pixels,
        )
        self.features = FeatureVisualizer(settings, self.registry, self.images, self.jobs)
        self.attributions = Attributions(self.registry, self.images, self.gate, self.jobs)
        self.weights = WeightViews(
            self.registry,
            self.images,
            self.gate,
            max_scale=settings.max_scale,
            max_json_floats=settings.max_json_floats,
            cache_bytes=settings.render_cache_bytes,
        )
        self.collections = Collections(
            settings.data_dir,
            self.registry,
            self.images,
            self.jobs,
            roots=settings.collection_roots,
            limits=CollectionLimits(
                settings.max_collection_members,
                settings.max_collection_bytes,
                settings.max_upload_bytes,
            ),
            builtin_collection=settings.builtin_collection,
        )
        self.model_store = ModelStore(
            settings.models_path,
            architectures=settings.model_upload_architectures,
            max_bytes=settings.max_model_upload_bytes,
            max_classes=settings.max_num_classes,
            max_parameters=settings.max_model_parameters,
            compute_slot=self.gate.slot,
            on_change=self.registry.refresh,
        )

    # --- life cycle -----------------------------------------------------------------------

    def load_default(self) -> LoadedModel:
        """Load the default model and the preloads, then settle the process for serving."""
        try:
            model = self.registry.get(self.settings.default_model)
            for name in self.settings.preload:
                try:
                    self.registry.get(name)
                except Exception as exc:
                    log.warning("preloading %s failed: %s", name, exc)
            for name in colormap.COLORMAPS:  # imports matplotlib now, not in the first request
                colormap.lookup_table(name, colormap.levels(name))
        finally:  # loaded or not: what is loaded now is frozen and the collector runs again
            freeze_heap()
            release_free_memory()
            release_library_pages()  # GPU libraries unused here, torch's run-once code
        return model

    def collect_leftovers(self) -> dict[str, int]:
        """One janitor pass (issue 10): old job results beyond the retention bounds,
        temporary files and orphan image halves of dead writes, stale upload staging.
        Returns how many entries each step removed."""
        settings, results = self.settings, self.settings.data_dir / "results"
        images = self.settings.data_dir / "images"
        removed = {
            "results": retention.trim(
                results,
                "*.png",
                max_count=settings.max_job_results,
                max_bytes=settings.max_job_results_bytes,
                max_age=settings.job_results_max_age_seconds,
            ),
            "temporaries": retention.remove_temporaries(results)
            + retention.remove_temporaries(images),
            "orphans": retention.remove_orphans(images, ".img", ".json"),
        }
        try:
            self.model_store.recover()
        except OSError as exc:
            log.warning("cleaning the models folder failed: %s", exc)
        return removed

    def refresh_models(self) -> None:
        """Re-read the models folder (another replica added or deleted a model)."""
        self.registry.refresh()

    def shutdown(self) -> None:
        self.jobs.shutdown(wait=False)

    def stats(self) -> Stats:
        models = self.models()
        caches = {
            name: CacheStats(cache.hits, cache.misses, cache.bytes)
            for name, cache in (
                ("activations", self.inspector.captures),
                ("render", self.inspector.rendered),
            )
        }
        return Stats(
            compute_running=self.gate.running,
            compute_queued=self.gate.waiting,
            compute_slots=self.gate.slots,
            compute_queue_limit=self.gate.queue,
            compute_rejected=self.gate.rejected,
            caches=caches,
            jobs=self.jobs.counts(),
            model_load_failures=self.registry.load_failures,
            models_loaded=sum(m["loaded"] for m in models),
            models_unavailable=sum(not m["available"] for m in models),
        )

    # --- models and layers ----------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        return self.registry.describe()

    def model_entry(self, name: str) -> dict[str, Any]:
        """One row of :meth:`models` (``UnknownModelError`` when not listed)."""
        return self.registry.describe_one(name)

    def model(self, name: str) -> LoadedModel:
        return self.registry.get(name)

    def layers(self, model: str) -> list[dict[str, Any]]:
        return [info.as_dict() for info in self.model(model).layers]

    def add_model(self, weights: BinaryIO, filename: str, manifest: dict[str, Any]) -> str:
        """Validate and store an uploaded model; returns the name it is served under."""
        return self.model_store.add(weights, filename, manifest)

    @staticmethod
    def convert_checkpoint(checkpoint: Path, folder: Path, **manifest: Any) -> dict[str, Any]:
        """A ``.pth`` state dict -> ``folder/model.safetensors`` + ``manifest.json``, checked
        as the server checks them (``models/convert.py``; no server or model needed)."""
        return convert.convert_checkpoint(checkpoint, folder, **manifest)

    def delete_model(self, name: str) -> None:
        """Delete an uploaded model (built-in and operator-provided ones refuse: 409)."""
        listed = {m["name"]: m["source"] for m in self.models()}
        self.model_store.delete(name, listed.get(name))

    # --- images -----------------------------------------------------------------------------

    def put_image(
        self, data: bytes, name: str | None, owner: str | None = None
    ) -> tuple[ImageRecord, bool]:
        """Store an image, owned by ``owner`` (an opaque key) when given."""
        return self.images.put(data, name, owner)

    def list_images(self, owner: str | None = None) -> list[dict[str, Any]]:
        """The samples and ``owner``'s own uploads (no owner: the samples)."""
        return [r.as_dict() for r in self.images.list_for(owner)]

    def delete_image(self, image_id: str, owner: str | None) -> None:
        """Drop ``owner``'s ownership of an upload; the bytes go with the last owner."""
        self.images.disown(image_id=image_id, owner=owner)

    def image(self, image_id: str) -> tuple[ImageRecord, bytes]:
        return self.images.data(image_id)

    def image_record(self, image_id: str) -> dict[str, Any]:
        return self.images.record(image_id).as_dict()

    # --- inspection: filters, inputs, feature maps ------------------------------------------

    def filters(
        self,
        model: str,
        layer: str,
        fmt: Format,
        view: FilterView,
        drawn_as: FilterGrid | None = None,
    ) -> Rendered:
        """A conv layer's filters as a PNG grid, JSON (values and stats) or NPY (exact)."""
        return self.inspector.filters(model, layer, fmt, view, drawn_as or FilterGrid())

    def input_view(self, model: str, image_id: str, fmt: Literal["png", "npy"]) -> Rendered:
        return self.inspector.input_view(model, image_id, fmt)

    def activations(
        self, model: str, image_id: str, layer: str, fmt: Format, view: MapView
    ) -> Rendered:
        return self.inspector.activations(model, image_id, layer, fmt, view)

    def activations_once(
        self, model: str, data: bytes, layer: str, fmt: Format, view: MapView
    ) -> Rendered:
        return self.inspector.activations_once(model, data, layer, fmt, view)

    def channel_stats(
        self, model: str, image_id: str, layer: str, top: int, baseline: str | None = None
    ) -> dict[str, Any]:
        """Per-channel statistics; with ``baseline`` (a collection id) the top-k by z-score."""
        stats = self.inspector.channel_stats(model, image_id, layer, top)
        return stats if baseline is None else self._against(stats, model, image_id, baseline, top)

    def predictions(self, model: str, image_id: str, top: int) -> list[dict[str, Any]]:
        return self.inspector.predictions(model, image_id, top)

    # --- feature visualisation and jobs -----------------------------------------------------

    def optimize(self, model: str, request: OptimizeRequest) -> JobStatus:
        return self.features.optimize(model, request)

    def optimize_now(
        self,
        model: str,
        request: OptimizeRequest,
        progress: Callable[[int, int], None] | None = None,
    ) -> bytes:
        return self.features.optimize_now(model, request, progress)

    def deepdream(
        self, model: str, image_id: str, layer: str, settings: DreamSettings
    ) -> JobStatus:
        return self.features.deepdream(model, image_id, layer, settings)

    def job(self, job_id: str) -> JobStatus:
        return self.jobs.status(job_id)

    def cancel_job(self, job_id: str, token: str | None = None) -> JobStatus:
        """Cancel with the submitter's control token (``JobTokenError`` if it is not one)."""
        return self.jobs.cancel(job_id, token)

    def job_result(self, job_id: str) -> bytes:
        return self.jobs.result_png(job_id)

    def job_preview(self, job_id: str) -> bytes | None:
        return self.jobs.preview_png(job_id)

    def job_update(self, job_id: str, last_version: int, timeout: float) -> JobStatus:
        """Block until the job's version passes ``last_version`` or ``timeout`` seconds pass."""
        return self.jobs.wait_for_update(job_id, last_version, timeout)

    def watch_job(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from another thread; it must only hand over) on every change of
        the job; returns the function that stops it. For waiting without a thread."""
        return self.jobs.subscribe(job_id, callback)

    # --- attribution ------------------------------------------------------------------------

    def cam(
        self,
        model: str,
        image_id: str,
        *,
        layer: str | None = None,
        class_index: int | None = None,
        method: CamMethod = "gradcam",
        fmt: Literal["png", "npy", "json"] = "png",
        alpha: float = 0.5,
    ) -> Rendered:
        return self.attributions.cam(
            model,
            image_id,
            layer=layer,
            class_index=class_index,
            method=method,
            fmt=fmt,
            alpha=alpha,
        )

    # Score-CAM and SmoothGrad take seconds: the routes get them through the job API.
    def cam_or_job(
        self,
        model: str,
        image_id: str,
        *,
        layer: str | None = None,
        class_index: int | None = None,
        method: CamMethod = "gradcam",
        fmt: Literal["png", "npy", "json"] = "png",
        alpha: float = 0.5,
    ) -> Rendered | JobStatus:
        """:meth:`cam` for fast methods; for Score-CAM the job's status until it is done."""
        return self.attributions.cam_or_job(
            model,
            image_id,
            layer=layer,
            class_index=class_index,
            method=method,
            fmt=fmt,
            alpha=alpha,
        )

    def saliency_or_job(
        self,
        model: str,
        image_id: str,
        *,
        method: SaliencyMethod = "vanilla",
        class_index: int | None = None,
        fmt: Literal["png", "npy"] = "png",
        samples: int = 16,
        noise: float = 0.15,
        seed: int = 0,
    ) -> Rendered | JobStatus:
        """:meth:`saliency` for fast methods; for SmoothGrad the job's status until done."""
        return self.attributions.saliency_or_job(
            model,
            image_id,
            method=method,
            class_index=class_index,
            fmt=fmt,
            samples=samples,
            noise=noise,
            seed=seed,
        )

    def saliency(
        self,
        model: str,
        image_id: str,
        *,
        method: SaliencyMethod = "vanilla",
        class_index: int | None = None,
        fmt: Literal["png", "npy"] = "png",
        samples: int = 16,
        noise: float = 0.15,
        seed: int = 0,
    ) -> Rendered:
        return self.attributions.saliency(
            model,
            image_id,
            method=method,
            class_index=class_index,
            fmt=fmt,
            samples=samples,
            noise=noise,
            seed=seed,
        )

    # --- weights ------------------------------------------------------------------------

    def expanded(
        self,
        model: str,
        layer: str,
        channel: int,
        onto: str = "input",
        fmt: Literal["png", "json", "npy"] = "png",
        *,
        top: int = 16,
        scale: int | None = None,
    ) -> Rendered:
        """Expanded weights of ``layer[channel]`` onto the image or an earlier layer."""
        return self.weights.expanded(model, layer, channel, onto, fmt, top=top, scale=scale)

    def filter_analysis(
        self, model: str, layer: str, fmt: Literal["json", "png"] = "json", scale: int | None = None
    ) -> Rendered:
        """Orientation, frequency, colour class and energy of a first conv layer's filters."""
        return self.weights.analysis(model, layer, fmt, scale)

    def compare_models(self, a: str, b: str, image_id: str | None = None) -> dict[str, Any]:
        """Where two checkpoints of one architecture differ, layer by layer."""
        return self.weights.compare(a, b, image_id)

    # --- collections ---------------------------------------------------------------------

    def list_collections(self) -> list[dict[str, Any]]:
        return self.collections.list_all()

    def collection_roots(self) -> list[dict[str, str]]:
        return self.collections.roots_listing()

    def create_collection(
        self, name: str, root: str | None = None, path: str | None = None
    ) -> dict[str, Any]:
        """A new collection, empty or filled from an allow-listed server folder."""
        return self.collections.create(name, root, path).summary()

    def collection(self, cid: str) -> dict[str, Any]:
        return self.collections.describe(cid)

    def find_collection(self, id_or_name: str) -> str:
        """A collection's id from its id or its name (the CLI)."""
        return self.collections.find(id_or_name)

    def import_folder(self, name: str, folder: Path) -> dict[str, Any]:
        """A collection of any local folder: for the CLI, which runs with the operator's
        rights (over HTTP only allow-listed roots are reachable)."""
        return self.collections.import_folder(name, folder)

    def delete_collection(self, cid: str) -> None:
        self.collections.delete(cid)

    def add_to_collection(
        self,
        cid: str,
        files: list[tuple[str, BinaryIO]],
        archive: tuple[str, BinaryIO] | None = None,
    ) -> dict[str, Any]:
        """Add uploaded files and/or one archive: ``{added, duplicates, skipped, images}``."""
        result = self.collections.add_files(cid, files)
        if archive is not None:
            more = self.collections.add_archive(cid, *archive)
            result = {
                "added": result["added"] + more["added"],
                "duplicates": result["duplicates"] + more["duplicates"],
                "skipped": result["skipped"] + more["skipped"],
                "images": result["images"] + more["images"],
            }
        return result

    def index_collection(
        self, model: str, cid: str, layers: tuple[str, ...] = (), k: int = 16
    ) -> JobStatus:
        """Start (or find) the job indexing ``cid`` through ``model``."""
        return self.collections.index(model, cid, IndexRequest(layers, k))

    def index_now(
        self,
        model: str,
        cid: str,
        layers: tuple[str, ...] = (),
        k: int = 16,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Index in this thread (the CLI): the job's summary."""
        return self.collections.index_now(model, cid, IndexRequest(layers, k), progress)

    def index_summary(self, job_id: str) -> dict[str, Any]:
        """The summary an index job returned (409 while it is not done)."""
        return self.collections.summary_of(self.jobs.result_png(job_id), job_id)

    def dataset_examples(
        self,
        model: str,
        cid: str,
        layer: str,
        channel: int,
        k: int = 9,
        by: Literal["max", "mean"] = "max",
        fmt: Literal["json", "png"] = "json",
        show: Literal["patch", "image", "overlay"] = "patch",
        rank: int | None = None,
    ) -> Rendered:
        """A channel's top-``k`` dataset examples (JSON, or a PNG of patches or images)."""
        return self.collections.examples(model, cid, layer, channel, k, by, fmt, show, rank)

    def collection_stats(
        self, model: str, cid: str, layer: str, fmt: Literal["json", "npy"] = "json"
    ) -> Rendered:
        return self.collections.stats(model, cid, layer, fmt)

    def _against(
        self, stats: dict[str, Any], model: str, image_id: str, cid: str, top: int
    ) -> dict[str, Any]:
        """``stats`` with each channel's z-score against collection ``cid``, top-k by it."""
        means = np.array([c["mean"] for c in stats["channels"]], np.float64)
        z, about = self.collections.zscores(model, cid, stats["layer"], image_id, means)
        order = np.argsort(-z, kind="stable")[:top]
        ranked = [{"index": int(i), "mean": float(means[i]), "z": float(z[i])} for i in order]
        return {**stats, "top": ranked, "baseline": about}
