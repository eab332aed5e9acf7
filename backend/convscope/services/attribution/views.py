"""Attribution views: where did the network look in this image? Grad-CAM family, saliency.

``Attributions`` resolves the model and image, runs ``methods`` under a compute slot and
renders the result (overlay PNG, NPY or JSON). The slow methods (Score-CAM: one forward pass
per channel; SmoothGrad: one backward pass per sample) also run as jobs
(:meth:`Attributions.cam_or_job`): the job computes the maps once, keeps them (packed as
NPZ) as its result, and any format is rendered from that result. A plain class with no
module state.

Over 300 lines: CAM and saliency each need the synchronous view, the job path and the
three encodings (PNG, NPY, JSON); the math itself is in ``methods.py``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from convscope.errors import InvalidParameterError
from convscope.render import encode, overlay
from convscope.render.legend import Scale
from convscope.services.attribution.methods import (
    CamMethod,
    CamResult,
    Progress,
    SaliencyMethod,
    SaliencyResult,
    cam,
    saliency,
)
from convscope.services.compute.gate import ComputeGate
from convscope.services.compute.jobs import (
    JobRunner,
    JobSpec,
    JobStatus,
    Work,
    cache_key,
)
from convscope.services.models.registry import LoadedModel, ModelRegistry
from convscope.services.rendered import JSON, NPY, PNG, Rendered
from convscope.services.storage.images import ImageStore

CAM_COLORMAP = "jet"  # pytorch-grad-cam's
SALIENCY_COLORMAP = "inferno"
SLOW_METHODS: frozenset[str] = frozenset({"scorecam", "smoothgrad"})
"""Methods that take seconds on a CPU: served through the job API by ``*_or_job``."""


class Attributions:
    """Grad-CAM, Grad-CAM++, Score-CAM and saliency maps for the registry's models."""

    def __init__(
        self,
        registry: ModelRegistry,
        images: ImageStore,
        gate: ComputeGate,
        jobs: JobRunner | None = None,
    ) -> None:
        self.registry = registry
        self.images = images
        self.gate = gate
        self.jobs = jobs

    # --- class activation maps -----------------------------------------------------------

    def cam(
        self,
        model_name: str,
        image_id: str,
        *,
        layer: str | None,
        class_index: int | None,
        method: CamMethod,
        fmt: Literal["png", "npy", "json"],
        alpha: float,
        progress: Progress | None = None,
    ) -> Rendered:
        """Grad-CAM family heatmap: PNG overlay on the input view, NPY ``[H, W]`` or JSON.

        Computed here and now, whatever the method (the CLI's way).
        """
        model, view = self._view(model_name, image_id)
        layer = self._cam_layer(model, layer)
        self._check_class(model, class_index)
        with self.gate.slot():
            result = self._compute_cam(model, view, layer, class_index, method, progress)
        return self._render_cam(model, view, result, fmt, alpha)

    def cam_or_job(
        self,
        model_name: str,
        image_id: str,
        *,
        layer: str | None,
        class_index: int | None,
        method: CamMethod,
        fmt: Literal["png", "npy", "json"],
        alpha: float,
    ) -> Rendered | JobStatus:
        """As :meth:`cam` for the fast methods; Score-CAM runs as a job: its status until it
        is done (asking again finds the same job), then the rendering of its result."""
        if method not in SLOW_METHODS or self.jobs is None:
            return self.cam(
                model_name,
                image_id,
                layer=layer,
                class_index=class_index,
                method=method,
                fmt=fmt,
                alpha=alpha,
            )
        model, view = self._view(model_name, image_id)
        layer = self._cam_layer(model, layer)
        self._check_class(model, class_index)
        image = self.images.resolve(image_id)  # 'cat' and its sha256: one job
        key = cache_key(
            kind="cam",
            model=model.name,
            weights=model.spec.weights,
            image=image,
            layer=layer,
            class_index=class_index,
            method=method,
        )
        shape = model.layer(layer).output_shape
        total = int(shape[0]) if shape else 0
        params = {"model": model_name, "image": image, "layer": layer, "class_index": class_index}
        status = self.jobs.submit(
            key,
            _job(partial(self._compute_cam, model, view, layer, class_index, method)),
            total=total,
            label=f"{method} {model.name} {layer} image {image_id[:12]}",
            spec=JobSpec("cam", {**params, "method": method}),
        )
        if status.state != "done":
            return status
        result = _unpack(CamResult, self.jobs.result_png(status.id))
        rendered = self._render_cam(model, view, result, fmt, alpha)
        rendered.headers["X-Convscope-Job"] = status.id
        return rendered

    def work_for(self, spec: JobSpec) -> Work:
        """Rebuild a ``cam`` or ``saliency`` job's work from its :class:`JobSpec` (a runner on
        another process)."""
        p = spec.params
        model, view = self._view(p["model"], p["image"])
        if spec.kind == "cam":
            return _job(
                partial(self._compute_cam, model, view, p["layer"], p["class_index"], p["method"])
            )
        if spec.kind == "saliency":
            args = (p["method"], p["class_index"], p["samples"], p["noise"], p["seed"])
            return _job(partial(self._compute_saliency, model, view, *args))
        raise ValueError(f"expected a job kind 'cam' or 'saliency', got {spec.kind!r}")

    def _compute_cam(
        self,
        model: LoadedModel,
        view: torch.Tensor,
        layer: str,
        class_index: int | None,
        method: CamMethod,
        progress: Progress | None,
    ) -> CamResult:
        pre = model.spec.preprocessing
        return cam(
            model.module,
            view,
            pre.mean,
            pre.std,
            layer=layer,
            class_index=class_index,
            method=method,
            model_name=model.name,
            progress=progress,
        )

    def _render_cam(
        self,
        model: LoadedModel,
        view: torch.Tensor,
        result: CamResult,
        fmt: Literal["png", "npy", "json"],
        alpha: float,
    ) -> Rendered:
        # The heatmap is the raw CAM min-max scaled: its 0 and 1 are the raw minimum and maximum.
        legend = Scale.one("map", CAM_COLORMAP, float(result.cam.amin()), float(result.cam.amax()))
        headers = {
            "X-Convscope-Class": str(result.class_index),
            "X-Convscope-Layer": result.layer,
            **legend.headers(),
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
                        "label": model.spec.label(result.class_index),
                        "score": result.score,
                        "cam": result.cam.numpy(),
                        "shape": list(result.heatmap.shape),
                        "scale": legend.as_dict(),
                    }
                ),
                JSON,
                headers,
            )
        base = encode.to_uint8(view).transpose(1, 2, 0)
        return Rendered(
            encode.png(
                overlay.overlay(base, result.heatmap.numpy(), alpha=alpha, cmap=CAM_COLORMAP)
            ),
            PNG,
            headers,
        )

    # --- saliency ------------------------------------------------------------------------

    def saliency(
        self,
        model_name: str,
        image_id: str,
        *,
        method: SaliencyMethod,
        class_index: int | None,
        fmt: Literal["png", "npy"],
        samples: int,
        noise: float,
        seed: int,
        progress: Progress | None = None,
    ) -> Rendered:
        """Saliency map: PNG (inferno colormap) or NPY ``[H, W]``, computed here and now."""
        model, view = self._view(model_name, image_id)
        self._check_class(model, class_index)
        with self.gate.slot():
            result = self._compute_saliency(
                model, view, method, class_index, samples, noise, seed, progress
            )
        return _render_saliency(result, fmt)

    def saliency_or_job(
        self,
        model_name: str,
        image_id: str,
        *,
        method: SaliencyMethod,
        class_index: int | None,
        fmt: Literal["png", "npy"],
        samples: int,
        noise: float,
        seed: int,
    ) -> Rendered | JobStatus:
        """As :meth:`saliency` for the fast methods; SmoothGrad runs as a job (see
        :meth:`cam_or_job`)."""
        if method not in SLOW_METHODS or self.jobs is None:
            return self.saliency(
                model_name,
                image_id,
                method=method,
                class_index=class_index,
                fmt=fmt,
                samples=samples,
                noise=noise,
                seed=seed,
            )
        model, view = self._view(model_name, image_id)
        self._check_class(model, class_index)
        if not 1 <= samples <= 128:  # methods.saliency's bound, checked before queueing
            raise InvalidParameterError("samples", f"expected 1 <= samples <= 128, got {samples}")
        image = self.images.resolve(image_id)  # 'cat' and its sha256: one job
        key = cache_key(
            kind="saliency",
            model=model.name,
            weights=model.spec.weights,
            image=image,
            class_index=class_index,
            method=method,
            samples=samples,
            noise=noise,
            seed=seed,
        )
        params = {"model": model_name, "image": image, "class_index": class_index}
        status = self.jobs.submit(
            key,
            _job(
                partial(
                    self._compute_saliency, model, view, method, class_index, samples, noise, seed
                )
            ),
            total=samples,
            label=f"{method} {model.name} image {image_id[:12]}",
            spec=JobSpec(
                "saliency",
                {**params, "method": method, "samples": samples, "noise": noise, "seed": seed},
            ),
        )
        if status.state != "done":
            return status
        rendered = _render_saliency(_unpack(SaliencyResult, self.jobs.result_png(status.id)), fmt)
        rendered.headers["X-Convscope-Job"] = status.id
        return rendered

    def _compute_saliency(
        self,
        model: LoadedModel,
        view: torch.Tensor,
        method: SaliencyMethod,
        class_index: int | None,
        samples: int,
        noise: float,
        seed: int,
        progress: Progress | None,
    ) -> SaliencyResult:
        pre = model.spec.preprocessing
        return saliency(
            model.module,
            view,
            pre.mean,
            pre.std,
            class_index=class_index,
            method=method,
            samples=samples,
            noise=noise,
            seed=seed,
            progress=progress,
        )

    # --- shared --------------------------------------------------------------------------

    def _view(self, model_name: str, image_id: str) -> tuple[LoadedModel, Any]:
        model = self.registry.get(model_name)
        _, image = self.images.open(image_id)
        return model, model.spec.preprocessing.view(image)

    @staticmethod
    def _cam_layer(model: LoadedModel, layer: str | None) -> str:
        if layer is not None:
            model.layer(layer)
            return layer
        default = model.cam_layer
        if default is None:
            raise InvalidParameterError("layer", "the model has no layer with a spatial output")
        return default

    @staticmethod
    def _check_class(model: LoadedModel, class_index: int | None) -> None:
        count = len(model.spec.categories)
        if class_index is not None and not 0 <= class_index < count:
            raise InvalidParameterError(
                "class_index", f"expected 0 <= class_index < {count}, got {class_index}"
            )


def _render_saliency(result: SaliencyResult, fmt: Literal["png", "npy"]) -> Rendered:
    values = result.saliency.numpy()
    legend = Scale.one("map", SALIENCY_COLORMAP, 0.0, overlay.clip_value(values))
    headers = {"X-Convscope-Class": str(result.class_index), **legend.headers()}
    if fmt == "npy":
        return Rendered(encode.npy(result.saliency), NPY, headers)
    heat = overlay.heatmap_rgb(overlay.unit_map(values), SALIENCY_COLORMAP)
    return Rendered(encode.png(heat), PNG, headers)


# A job's result is bytes: the result dataclass's fields, packed as NPZ (plain arrays and
# 0-d scalars, no pickle).

Result = TypeVar("Result", CamResult, SaliencyResult)


def _job(compute: Callable[[Progress | None], CamResult | SaliencyResult]) -> Work:
    """A job's work: ``compute(progress)``, its result packed."""
    return lambda ctx: _pack(compute(ctx.progress))


def _pack(result: CamResult | SaliencyResult) -> bytes:
    arrays: dict[str, Any] = {
        f.name: value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        for f in fields(result)
        for value in (getattr(result, f.name),)
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _unpack(kind: type[Result], data: bytes) -> Result:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        values: dict[str, Any] = {
            f.name: torch.from_numpy(z[f.name].copy()) if z[f.name].ndim else z[f.name].item()
            for f in fields(kind)
        }
    return kind(**values)
