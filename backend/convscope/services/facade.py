"""The one door: ``Convscope`` is the only object routes, the CLI and metrics talk to.

It owns the registry, the image store, the model store, the compute gate, the job manager and
the capability services (``inspection``, ``optvis``, ``attribution``), and exposes each
operation as one method, plus a :meth:`Convscope.stats` snapshot for metrics. A plain class
with no module-level state, so a serving framework can wrap it as a replica.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from convscope.config import Settings
from convscope.render import colormap, overlay
from convscope.services.attribution.methods import CamMethod, SaliencyMethod
from convscope.services.attribution.views import Attributions
from convscope.services.compute.gate import ComputeGate
from convscope.services.compute.jobs import JobManager, JobStatus
from convscope.services.compute.runtime import configure_threads, freeze_heap, tune_allocator
from convscope.services.inspection.drawing import GridBounds
from convscope.services.inspection.filters import FilterGrid, FilterView
from convscope.services.inspection.inspector import Inspector
from convscope.services.inspection.maps import Format, MapView
from convscope.services.models.registry import LoadedModel, ModelRegistry
from convscope.services.models.uploads import ModelStore
from convscope.services.optvis.optimize import DreamSettings
from convscope.services.optvis.runs import FeatureVisualizer, OptimizeRequest
from convscope.services.rendered import Rendered
from convscope.services.storage.images import ImageRecord, ImageStore

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


class Convscope:
    """The service: models, images, and every view of them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        tune_allocator(arenas=configure_threads(settings.torch_threads))
        self.registry = ModelRegistry(settings)
        self.images = ImageStore(
            settings.data_dir,
            max_images=settings.max_images,
            max_bytes=settings.max_image_store_bytes,
            max_pixels=settings.max_image_pixels,
        )
        self.gate = ComputeGate(settings.max_concurrent_compute, settings.max_queue)
        self.jobs = JobManager(
            settings.max_running_jobs,
            settings.max_queued_jobs,
            results_dir=settings.data_dir / "results",
            preview_encoder=lambda t: overlay.images_png(t.clamp(0, 1)),
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
        self.attributions = Attributions(self.registry, self.images, self.gate)
        self.model_store = ModelStore(
            settings.models_path,
            architectures=settings.model_upload_architectures,
            max_bytes=settings.max_model_upload_bytes,
            max_classes=settings.max_num_classes,
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
        return model

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

    def delete_model(self, name: str) -> None:
        """Delete an uploaded model (built-in and operator-provided ones refuse: 409)."""
        listed = {m["name"]: m["source"] for m in self.models()}
        self.model_store.delete(name, listed.get(name))

    # --- images -----------------------------------------------------------------------------

    def put_image(self, data: bytes, name: str | None) -> tuple[ImageRecord, bool]:
        return self.images.put(data, name)

    def list_images(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.images.list()]

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

    def channel_stats(self, model: str, image_id: str, layer: str, top: int) -> dict[str, Any]:
        return self.inspector.channel_stats(model, image_id, layer, top)

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

    def cancel_job(self, job_id: str) -> JobStatus:
        return self.jobs.cancel(job_id)

    def job_result(self, job_id: str) -> bytes:
        return self.jobs.result_png(job_id)

    def job_preview(self, job_id: str) -> bytes | None:
        return self.jobs.preview_png(job_id)

    def job_update(self, job_id: str, last_version: int, timeout: float) -> JobStatus:
        """Block until the job's version passes ``last_version`` or ``timeout`` seconds pass."""
        return self.jobs.wait_for_update(job_id, last_version, timeout)

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
