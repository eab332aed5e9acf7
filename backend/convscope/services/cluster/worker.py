"""A job as a Ray task: rebuild its work from the :class:`JobSpec` and run it.

The task builds the model from the same registry and settings as the API process that
submitted it (``data_dir`` is one shared filesystem path on every node), reports progress and
previews to the job table, stops when the table says the job was cancelled, and writes the
result into the shared results folder before it says "done".
"""

from __future__ import annotations

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
from convscope.services.compute.jobs import JobContext, JobManager, JobSpec
from convscope.services.models.registry import ModelRegistry
from convscope.services.optvis.runs import FeatureVisualizer
from convscope.services.storage.files import atomic_write
from convscope.services.storage.images import ImageStore

log = logging.getLogger(__name__)


@dataclass
class _Environment:
    registry: ModelRegistry
    features: FeatureVisualizer


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
        # The visualiser only rebuilds work here; its manager never runs anything.
        features = FeatureVisualizer(settings, registry, images, JobManager(1, 0))
        while len(_ENVIRONMENTS) >= 2:  # settings rarely differ: keep the two latest
            del _ENVIRONMENTS[next(iter(_ENVIRONMENTS))]
        env = _ENVIRONMENTS[key] = _Environment(registry, features)
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
        work = _environment(settings).features.work_for(spec)
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
