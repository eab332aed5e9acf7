"""Grad-CAM latency: convscope's implementation against pytorch-grad-cam, in-process.

Same model (the embedded EfficientNet-Lite0), same input, same layer, same class. Ours runs on
the service's model as served (parameters frozen); pytorch-grad-cam needs gradients on, so it
gets a copy with ``requires_grad`` back on. Both maps are also compared, so a fast wrong
answer cannot win.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from bench.table import Row, median
from convscope.config import Settings
from convscope.services.attribution import methods as attribution
from convscope.services.models.registry import ModelRegistry

LAYER = "bn2"


def _time(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return median(times), out


def cam_rows(data_dir: Path, runs: int = 10) -> list[Row]:
    from PIL import Image
    from skimage import data

    registry = ModelRegistry(Settings(data_dir=data_dir))
    model = registry.get("efficientnet_lite0")
    pre = model.spec.preprocessing
    view = pre.view(Image.fromarray(data.chelsea()))
    x = pre.standardize(view)[None]
    reference = copy.deepcopy(model.module).requires_grad_(True).eval()
    target_layer = reference.get_submodule(LAYER)
    class_index = int(model.module(x).argmax())
    rows = []
    for method, cls in (("gradcam", GradCAM), ("gradcampp", GradCAMPlusPlus)):
        ours_s, ours = _time(
            lambda method=method: attribution.cam(
                model.module,
                view,
                pre.mean,
                pre.std,
                layer=LAYER,
                class_index=class_index,
                method=method,
            ),
            runs,
        )
        with cls(model=reference, target_layers=[target_layer]) as explainer:
            theirs_s, theirs = _time(
                lambda explainer=explainer: explainer(
                    input_tensor=x, targets=[ClassifierOutputTarget(class_index)]
                ),
                runs,
            )
        diff = float(np.abs(ours.heatmap.numpy() - theirs[0]).max())
        rows.append(
            Row(
                f"{method} {LAYER} in-process",
                ours_s * 1000,
                "ms",
                theirs_s * 1000,
                "pytorch-grad-cam",
                samples=runs,
                note=f"{method}: max |ours - pytorch-grad-cam| = {diff:.1e} (224x224 map)",
            )
        )
    return rows
