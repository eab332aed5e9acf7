"""Feature visualisation runs: what does a channel want to see? Optimisation and DeepDream.

``FeatureVisualizer`` checks a request (bad ones raise now, as 4xx, not as failed jobs),
builds its work and hands it to the job manager it is given. A plain class, no module state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from convscope.config import Settings
from convscope.errors import InvalidParameterError, NoActivationError
from convscope.render import overlay
from convscope.services.compute.jobs import (
    JobContext,
    JobRunner,
    JobSpec,
    JobStatus,
    Work,
    cache_key,
)
from convscope.services.models.registry import ModelRegistry
from convscope.services.optvis.objectives import Objective, check_objective, parse_objective
from convscope.services.optvis.optimize import (
    DreamSettings,
    Limits,
    OptimizeSettings,
    deepdream,
    optimize_images,
    validate_settings,
)
from convscope.services.storage.images import ImageStore

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


class FeatureVisualizer:
    """Optimisation and DeepDream jobs for the registry's models."""

    def __init__(
        self, settings: Settings, registry: ModelRegistry, images: ImageStore, jobs: JobRunner
    ) -> None:
        self.registry = registry
        self.images = images
        self.jobs = jobs
        self.limits = Limits(
            max_steps=settings.max_optimize_steps,
            max_size=settings.max_optimize_size,
            max_batch=settings.max_optimize_batch,
        )

    # --- feature visualisation jobs ------------------------------------------------------

    def optimize(self, model_name: str, request: OptimizeRequest) -> JobStatus:
        """Queue (or find) the job that renders ``request``'s objectives; checks it first."""
        key, label, total, work = self._plan(model_name, request)
        spec = JobSpec("optimize", {"model": model_name, "request": request})
        return self._submit(key, work, total, label, spec)

    def _submit(self, key: str, work: Work, total: int, label: str, spec: JobSpec) -> JobStatus:
        """Submit through the job manager, so every submitter, even of work already queued,
        running or done under ``key``, gets its own control token. A job answered done was
        asked before (a new one is queued first): its result is the cached one."""
        status = self.jobs.submit(key, work, total=total, label=label, spec=spec)
        return replace(status, cached=True) if status.state == "done" else status

    def work_for(self, spec: JobSpec) -> Work:
        """Rebuild a job's work from its :class:`JobSpec` (a runner on another process)."""
        if spec.kind == "optimize":
            return self._plan(spec.params["model"], spec.params["request"])[3]
        if spec.kind == "deepdream":
            p = spec.params
            return self._dream_plan(p["model"], p["image"], p["layer"], p["settings"])[3]
        raise ValueError(f"expected a job kind 'optimize' or 'deepdream', got {spec.kind!r}")

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
        key, label, total, work = self._dream_plan(model_name, image_id, layer, settings)
        spec = JobSpec(
            "deepdream",
            {"model": model_name, "image": image_id, "layer": layer, "settings": settings},
        )
        return self._submit(key, work, total, label, spec)

    def _dream_plan(
        self, model_name: str, image_id: str, layer: str, settings: DreamSettings
    ) -> tuple[str, str, int, Work]:
        """Check a DeepDream request and build its work."""
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

        return key, f"{model.name}: dream {layer}", total, work


def _every(total: int) -> int:
    """Preview about 16 times per run."""
    return max(1, total // 16)
