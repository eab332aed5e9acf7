"""A job as a Ray task: rebuild its work from the :class:`JobSpec` and run it.

The task builds the model from the same registry and settings as the API process that
submitted it (``data_dir`` is one shared filesystem path on every node), reports progress and
previews to the job table, stops when the table says the job was cancelled, and writes the
result into the shared results folder before it says "done".

Kinds: ``optimize`` and ``deepdream`` (:class:`FeatureVisualizer`), ``cam`` and ``saliency``
(:class:`Attributions`: the result is their NPZ), and ``collection-index``: the index runs on
Ray Data from inside this task (:func:`indexing.build_on_ray`: an actor pool that grows onto
nodes that join, one model copy per actor) and its result is the JSON summary. Every result
is stored as ``<key>.png`` in the results folder, whatever its bytes are (one convention for
every kind, read back by ``RayJobManager.result_png``).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from convscope.config import Settings
from convscope.errors import CancelledError, ConvscopeError
from convscope.render import overlay
from convscope.services.attribution.views import Attributions
from convscope.services.collections.ingest import Limits as CollectionLimits
from convscope.services.collections.service import INDEX_JOB, Collections
from convscope.services.compute.gate import ComputeGate
from convscope.services.compute.jobs import JobContext, JobManager, JobSpec, Work
from convscope.services.models.registry import ModelRegistry
from convscope.services.optvis.runs import FeatureVisualizer
from convscope.services.storage.files import atomic_write
from convscope.services.storage.images import ImageStore

log = logging.getLogger(__name__)


@dataclass
class _Environment:
    settings: Settings
    registry: ModelRegistry
    features: FeatureVisualizer
    attributions: Attributions
    collections: Collections

    def work_for(self, spec: JobSpec) -> Work:
        """The job's work, rebuilt from its spec (unknown kinds raise ``ValueError``)."""
        if spec.kind in ("optimize", "deepdream"):
            return self.features.work_for(spec)
        if spec.kind in ("cam", "saliency"):
            return self.attributions.work_for(spec)
        if spec.kind == INDEX_JOB:
            return self._index_work(spec)
        raise ValueError(
            "expected a job kind 'optimize', 'deepdream', 'cam', 'saliency' or "
            f"{INDEX_JOB!r}, got {spec.kind!r}"
        )

    def _index_work(self, spec: JobSpec) -> Work:
        from convscope.services.cluster.indexing import build_on_ray

        p = spec.params
        model = self.registry.get(p["model"])

        def work(ctx: JobContext) -> bytes:
            summary = build_on_ray(
                self.settings,
                self.collections,
                model,
                p["collection"],
                list(p["layers"]),
                int(p["k"]),
                progress=ctx.progress,
                cancel=ctx.cancel_event,
            )
            return json.dumps(summary).encode()

        return work


# One environment per settings in each Ray worker process: Ray reuses worker processes for
# tasks of the same shape, so a model loaded for one job serves the next one (the registry's
# own LRU bounds how many stay loaded). This is process state by design: the process is Ray's.
_ENVIRONMENTS: dict[str, _Environment] = {}


def _environment(settings: Settings) -> _Environment:
    key = settings.model_dump_json()
    env = _ENVIRONMENTS.get(key)
    if env is None:
        registry = ModelRegistry(settings)
        images = ImageStore(
            settings.data_dir,
            max_images=settings.max_images,
            max_bytes=settings.max_image_store_bytes,
            max_pixels=settings.max_image_pixels,
        )
        # The services only rebuild work here (as services/facade.py builds them); their
        # manager never runs anything.
        idle = JobManager(1, 0)
        features = FeatureVisualizer(settings, registry, images, idle)
        gate = ComputeGate(settings.max_concurrent_compute, settings.max_queue)
        attributions = Attributions(registry, images, gate, idle)
        collections = Collections(
            settings.data_dir,
            registry,
            images,
            idle,
            roots=settings.collection_roots,
            limits=CollectionLimits(
                settings.max_collection_members,
                settings.max_collection_bytes,
                settings.max_upload_bytes,
            ),
            builtin_collection=False,  # the API processes create it, never a job
        )
        while len(_ENVIRONMENTS) >= 2:  # settings rarely differ: keep the two latest
            del _ENVIRONMENTS[next(iter(_ENVIRONMENTS))]
        env = _ENVIRONMENTS[key] = _Environment(
            settings, registry, features, attributions, collections
        )
    return env


def _preview_png(preview: torch.Tensor) -> bytes:
    return overlay.images_png(preview.detach().cpu().clamp(0, 1))


def run_job(
    table: Any, job_id: str, key: str, spec: JobSpec, settings: Settings, results_dir: str
) -> dict[str, Any]:
    """Run one job; returns ``{"state": ..., "error": ...}`` for the table.

    Raising is kept for what Ray should retry (a lost worker); a job's own error is an
    outcome.
    """
    node = ray.get_runtime_context().get_node_id()
    if not ray.get(table.started.remote(job_id, node)):
        return {"state": "cancelled"}
    cancel = threading.Event()

    def report(step: int, total: int, preview: torch.Tensor | None) -> None:
        png = _preview_png(preview) if preview is not None else None
        if ray.get(table.report.remote(job_id, step, total, png)):
            cancel.set()

    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))  # what the task declared, not the node's
        work = _environment(settings).work_for(spec)
        result = work(JobContext(job_id, cancel, report))
    except CancelledError:
        return {"state": "cancelled"}
    except ConvscopeError as exc:
        return {"state": "failed", "error": {"code": exc.code, "detail": exc.detail}}
    except Exception as exc:
        log.exception("job %s (%s) failed", job_id, spec.kind)
        return {
            "state": "failed",
            "error": {"code": "internal_error", "detail": f"{type(exc).__name__}: {exc}"},
        }
    path = Path(results_dir) / f"{key}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, result)  # on the shared folder before the job shows as done
    return {"state": "done"}
