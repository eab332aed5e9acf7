"""Composition for the questions a weight or a feature map cannot answer alone.

- What does a channel want to see? Feature visualisation by optimisation, run as a job.
- Where did the network look in this image? Grad-CAM (++/Score-CAM) and saliency maps.

``Explainer`` owns the job manager and uses the same registry, image store and compute gate
as the rest of the service. Like ``Convscope`` it is a plain class with no module state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from convscope.config import Settings
from convscope.errors import InvalidParameterError, NoActivationError
from convscope.render import encode, overlay
from convscope.services.attribution import CAM_METHODS, SALIENCY_METHODS, cam, saliency
from convscope.services.gate import ComputeGate
from convscope.services.images import ImageStore
from convscope.services.jobs import JobContext, JobManager, JobStatus, cache_key
from convscope.services.objectives import Objective, check_objective, parse_objective
from convscope.services.optimize import (
    DreamSettings,
    Limits,
    OptimizeSettings,
    deepdream,
    optimize_images,
    validate_settings,
)
from convscope.services.output import JSON, NPY, PNG, Rendered
from convscope.services.registry import LoadedModel, ModelRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizeRequest:
    """What to optimise: ``objectives`` (texts, one image each), or ``layer`` + ``channels``."""

    objectives: tuple[str, ...] = ()
    layer: str | None = None
    channels: tuple[int, ...] = ()
    kind: Literal["channel", "neuron", "layer"] = "channel"
    negative: bool = False
    settings: OptimizeSettings = field(default_factory=OptimizeSettings)

    def parsed(self) -> list[Objective]:
        if self.objectives:
            return [parse_objective(text) for text in self.objectives]
        if self.layer is None:
            raise InvalidParameterError(
                "objectives", "give 'objectives' (e.g. ['blocks.4:10']) or 'layer' (+ 'channels')"
            )
        if self.kind == "layer":
            found = [Objective.layer(self.layer)]
        else:
            if not self.channels:
                raise InvalidParameterError(
                    "channels", f"a {self.kind} objective needs at least one channel"
                )
            make = Objective.channel if self.kind == "channel" else Objective.neuron
            found = [make(self.layer, c) for c in self.channels]
        return [-o for o in found] if self.negative else found


class Explainer:
    """Optimisation jobs, Grad-CAM and saliency for the registry's models."""

    def __init__(
        self, settings: Settings, registry: ModelRegistry, images: ImageStore, gate: ComputeGate
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.images = images
        self.gate = gate
        self.limits = Limits(
            max_steps=settings.max_optimize_steps,
            max_size=settings.max_optimize_size,
            max_batch=settings.max_optimize_batch,
        )
        self.jobs = JobManager(
            settings.max_running_jobs,
            settings.max_queued_jobs,
            results_dir=settings.data_dir / "results",
            preview_encoder=lambda t: overlay.images_png(t.clamp(0, 1)),
        )

    # --- feature visualisation jobs ------------------------------------------------------

    def optimize(self, model_name: str, request: OptimizeRequest) -> JobStatus:
        """Queue (or find) the job that renders ``request``'s objectives; checks it first."""
        key, label, total, work = self._plan(model_name, request)
        existing = self.jobs.find(key)
        if existing is not None and existing.state not in ("failed", "cancelled"):
            # Asked before: the same job, and if it is done, its result is the cached one.
            return replace(existing, cached=True) if existing.state == "done" else existing
        return self.jobs.submit(key, work, total=total, label=label)

    def optimize_now(
        self,
        model_name: str,
        request: OptimizeRequest,
        progress: Callable[[int, int], None] | None = None,
    ) -> bytes:
        """Render ``request`` in this thread (the CLI): PNG bytes, images side by side."""
        _, _, _, work = self._plan(model_name, request)

        def report(step: int, total: int, _preview: object) -> None:
            if progress is not None:
                progress(step, total)

        return work(JobContext("now", threading.Event(), report))

    def _plan(
        self, model_name: str, request: OptimizeRequest
    ) -> tuple[str, str, int, Callable[[JobContext], bytes]]:
        """Check a request (bad ones raise now, as 4xx, not as failed jobs) and build its work."""
        model = self.registry.get(model_name)
        objectives = request.parsed()
        pre = model.spec.preprocessing
        settings = request.settings
        key = cache_key(
            kind="optimize",
            model=model.name,
            weights=model.spec.weights,
            objectives=[o.describe() for o in objectives],
            settings=asdict(settings),
        )
        validate_settings(settings, self.limits, len(objectives))
        # Channel counts come from the layer table traced at load: no forward pass here.
        shapes: dict[str, list[int]] = {}
        for name in dict.fromkeys(name for o in objectives for name in o.layers):
            shape = model.layer(name).output_shape
            if shape is None:
                raise NoActivationError(model.name, name, "it has no tensor output to maximise")
            shapes[name] = shape
        for objective in objectives:
            check_objective(objective, shapes)

        def work(ctx: JobContext) -> bytes:
            images = optimize_images(
                model.module,
                objectives,
                pre.mean,
                pre.std,
                OptimizeSettings(**{**asdict(settings), "preview_every": _every(settings.steps)}),
                model_name=model.name,
                limits=self.limits,
                progress=ctx.progress,
                cancel=ctx.cancel_event,
            )
            return overlay.images_png(images)

        label = f"{model.name}: " + ", ".join(o.describe() for o in objectives)
        return key, label, settings.steps, work

    def deepdream(
        self, model_name: str, image_id: str, layer: str, settings: DreamSettings
    ) -> JobStatus:
        """Queue (or find) a DeepDream job on an image for one layer."""
        model = self.registry.get(model_name)
        model.layer(layer)
        record, image = self.images.open(image_id)
        pre = model.spec.preprocessing
        key = cache_key(
            kind="deepdream",
            model=model.name,
            weights=model.spec.weights,
            image=record.id,
            layer=layer,
            settings=asdict(settings),
        )
        view = pre.view(image)
        total = settings.steps * settings.octaves

        def work(ctx: JobContext) -> bytes:
            dreamed = deepdream(
                model.module,
                view,
                layer,
                pre.mean,
                pre.std,
                DreamSettings(**{**asdict(settings), "preview_every": _every(total)}),
                model_name=model.name,
                progress=ctx.progress,
                cancel=ctx.cancel_event,
            )
            return overlay.images_png(dreamed[None])

        return self.jobs.submit(key, work, total=total, label=f"{model.name}: dream {layer}")

    # --- attribution ------------------------------------------------------------------

    def cam(
        self,
        model_name: str,
        image_id: str,
        *,
        layer: str | None,
        class_index: int | None,
        method: str,
        fmt: Literal["png", "npy", "json"],
        alpha: float,
    ) -> Rendered:
        """Grad-CAM family heatmap: PNG overlay on the input view, NPY ``[H, W]`` or JSON."""
        if method not in CAM_METHODS:
            raise InvalidParameterError("method", f"expected one of {CAM_METHODS}, got {method!r}")
        model, view = self._view(model_name, image_id)
        if layer is not None:
            model.layer(layer)
        self._check_class(model, class_index)
        pre = model.spec.preprocessing
        with self.gate.slot():
            result = cam(
                model.module,
                view,
                pre.mean,
                pre.std,
                layer=layer,
                class_index=class_index,
                method=method,  # type: ignore[arg-type]  # checked above
                model_name=model.name,
            )
        headers = {
            "X-Convscope-Class": str(result.class_index),
            "X-Convscope-Layer": result.layer,
        }
        if fmt == "npy":
            return Rendered(encode.npy(result.heatmap), NPY, headers)
        if fmt == "json":
            return Rendered(
                encode.json(
                    {
                        "layer": result.layer,
                        "method": result.method,
                        "class_index": result.class_index,
                        "label": _label(model, result.class_index),
                        "score": result.score,
                        "cam": result.cam.numpy(),
                        "shape": list(result.heatmap.shape),
                    }
                ),
                JSON,
                headers,
            )
        base = encode.to_uint8(view).transpose(1, 2, 0)
        return Rendered(
            encode.png(overlay.overlay(base, result.heatmap.numpy(), alpha=alpha)), PNG, headers
        )

    def saliency(
        self,
        model_name: str,
        image_id: str,
        *,
        method: str,
        class_index: int | None,
        fmt: Literal["png", "npy"],
        samples: int,
        noise: float,
        seed: int,
    ) -> Rendered:
        """Saliency map: PNG (hot colormap) or NPY ``[H, W]``; ``npy`` + raw for the gradient."""
        if method not in SALIENCY_METHODS:
            raise InvalidParameterError(
                "method", f"expected one of {SALIENCY_METHODS}, got {method!r}"
            )
        model, view = self._view(model_name, image_id)
        self._check_class(model, class_index)
        pre = model.spec.preprocessing
        with self.gate.slot():
            result = saliency(
                model.module,
                view,
                pre.mean,
                pre.std,
                class_index=class_index,
                method=method,  # type: ignore[arg-type]  # checked above
                samples=samples,
                noise=noise,
                seed=seed,
            )
        headers = {"X-Convscope-Class": str(result.class_index)}
        if fmt == "npy":
            return Rendered(encode.npy(result.saliency), NPY, headers)
        heat = overlay.heatmap_rgb(overlay.unit_map(result.saliency.numpy()), "inferno")
        return Rendered(encode.png(heat), PNG, headers)

    def _view(self, model_name: str, image_id: str) -> tuple[LoadedModel, Any]:
        model = self.registry.get(model_name)
        _, image = self.images.open(image_id)
        return model, model.spec.preprocessing.view(image)

    @staticmethod
    def _check_class(model: LoadedModel, class_index: int | None) -> None:
        count = len(model.spec.categories)
        if class_index is not None and not 0 <= class_index < count:
            raise InvalidParameterError(
                "class_index", f"expected 0 <= class_index < {count}, got {class_index}"
            )

    def shutdown(self) -> None:
        self.jobs.shutdown(wait=False)


def _every(total: int) -> int:
    """Preview about 16 times per run."""
    return max(1, total // 16)


def _label(model: LoadedModel, index: int) -> str:
    names = model.spec.categories
    return names[index] if 0 <= index < len(names) else str(index)
