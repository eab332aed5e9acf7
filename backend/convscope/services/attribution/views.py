"""Attribution views: where did the network look in this image? Grad-CAM family, saliency.

``Attributions`` resolves the model and image, runs ``methods`` under a compute slot and
renders the result (overlay PNG, NPY or JSON). A plain class with no module state.
"""

from __future__ import annotations

from typing import Any, Literal

from convscope.errors import InvalidParameterError
from convscope.render import encode, overlay
from convscope.services.attribution.methods import CamMethod, SaliencyMethod, cam, saliency
from convscope.services.compute.gate import ComputeGate
from convscope.services.models.registry import LoadedModel, ModelRegistry
from convscope.services.rendered import JSON, NPY, PNG, Rendered
from convscope.services.storage.images import ImageStore


class Attributions:
    """Grad-CAM, Grad-CAM++, Score-CAM and saliency maps for the registry's models."""

    def __init__(self, registry: ModelRegistry, images: ImageStore, gate: ComputeGate) -> None:
        self.registry = registry
        self.images = images
        self.gate = gate

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
    ) -> Rendered:
        """Grad-CAM family heatmap: PNG overlay on the input view, NPY ``[H, W]`` or JSON."""
        model, view = self._view(model_name, image_id)
        if layer is not None:
            model.layer(layer)
        else:
            layer = model.cam_layer
            if layer is None:
                raise InvalidParameterError("layer", "the model has no layer with a spatial output")
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
                method=method,
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
                        "label": model.spec.label(result.class_index),
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
        method: SaliencyMethod,
        class_index: int | None,
        fmt: Literal["png", "npy"],
        samples: int,
        noise: float,
        seed: int,
    ) -> Rendered:
        """Saliency map: PNG (hot colormap) or NPY ``[H, W]``; ``npy`` + raw for the gradient."""
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
                method=method,
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
