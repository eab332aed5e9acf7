"""Feature visualisation by optimisation (activation maximisation) and DeepDream.

``optimize_images`` renders one image per objective, all in ONE batch: each image of the batch has
its own objective, its own random start and its own random transforms. Only the input image
gets gradients (``torch.autograd.grad`` w.r.t. the image parameters): the model's parameters
are never touched and no weight gradient is computed; the forward stops at the deepest layer
an objective reads. All randomness comes from a local ``torch.Generator`` seeded with
``settings.seed``, so a seed gives the same image again (on the same device and threads).

Callers that share the module between threads should hold the model's lock, or at least
know that the hooks here only react to this thread's forward passes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from convscope.errors import CancelledError, InvalidParameterError
from convscope.services.models.device import module_device
from convscope.services.models.hooks import LayerTap, eval_mode, resolve_layers
from convscope.services.models.preprocess import standardize
from convscope.services.optvis.objectives import Objective, check_objective
from convscope.services.optvis.param import Parametrization, image_param
from convscope.services.optvis.transforms import TransformSettings, random_transform

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, torch.Tensor | None], None]
"""``progress(step, total, preview)``; ``preview`` is ``Tensor[N, 3, H, W]`` in [0, 1] or None.
It may raise (e.g. :class:`CancelledError`) to stop the run."""


@dataclass(frozen=True)
class OptimizeSettings:
    """How to optimise. ``size`` is the image side in pixels; ``lr`` is Adam's step size."""

    steps: int = 128
    size: int = 128
    lr: float = 0.05
    seed: int = 0
    param: Parametrization = "fourier"
    decorrelate: bool = True
    transforms: bool = True
    preview_every: int = 0  # 0: no previews; k: a preview every k steps and at the end


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for (the service's, not the user's, choice)."""

    max_steps: int = 2048
    max_size: int = 512
    max_batch: int = 16
    min_size: int = 16


@dataclass(frozen=True)
class DreamSettings:
    """DeepDream: ``steps`` per octave of normalised-gradient ascent on the [0, 1] image."""

    steps: int = 20
    octaves: int = 3
    octave_scale: float = 1.4
    lr: float = 0.01
    jitter: int = 16
    seed: int = 0
    preview_every: int = 0


@dataclass
class _Run:
    """Per-call plumbing shared by the optimisation loops."""

    total: int
    progress: ProgressFn | None
    cancel: threading.Event | None
    preview_every: int
    done: int = field(default=0)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"cancelled after {self.done} of {self.total} steps")

    def step(self, preview: Callable[[], torch.Tensor]) -> None:
        self.done += 1
        if self.progress is None:
            return
        show = self.preview_every > 0 and (
            self.done % self.preview_every == 0 or self.done == self.total
        )
        self.progress(self.done, self.total, preview() if show else None)


def _check_positive(name: str, value: float, upper: float | None = None) -> None:
    if not value > 0 or (upper is not None and value > upper):
        bound = f"0 < {name} <= {upper:g}" if upper is not None else f"{name} > 0"
        raise InvalidParameterError(name, f"expected {bound}, got {value}")


def validate_settings(settings: OptimizeSettings, limits: Limits, batch: int) -> None:
    """Raise :class:`InvalidParameterError` for settings outside ``limits``."""
    _check_positive("steps", settings.steps, limits.max_steps)
    if not limits.min_size <= settings.size <= limits.max_size:
        raise InvalidParameterError(
            "size", f"expected {limits.min_size} <= size <= {limits.max_size}, got {settings.size}"
        )
    _check_positive("lr", settings.lr, 10.0)
    if settings.preview_every < 0:
        raise InvalidParameterError("preview_every", f"expected >= 0, got {settings.preview_every}")
    if settings.param not in ("fourier", "pixel"):
        raise InvalidParameterError(
            "param", f"expected 'fourier' or 'pixel', got {settings.param!r}"
        )
    if not 1 <= batch <= limits.max_batch:
        raise InvalidParameterError(
            "objectives", f"expected 1 to {limits.max_batch} objectives, got {batch}"
        )


def layer_shapes(
    module: nn.Module,
    layers: Sequence[str],
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    model_name: str = "model",
) -> dict[str, list[int]]:
    """Per-image output shapes (``[C, H, W]`` or ``[F]``) of ``layers`` for a grey image."""
    x = standardize(torch.full((1, 3, size, size), 0.5, device=module_device(module)), mean, std)
    with torch.no_grad(), LayerTap(module, layers, model_name) as tap:
        outputs, _ = tap.run(x)
    return {name: list(out.shape[1:]) for name, out in outputs.items()}


def _batch_loss(objectives: Sequence[Objective], acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Minus the sum over images of image ``i``'s objective on ``acts[layer][i]``."""
    total = torch.zeros((), device=next(iter(acts.values())).device)
    for i, objective in enumerate(objectives):
        total = total - objective.value({name: acts[name][i] for name in objective.layers})
    return total


def optimize_images(
    module: nn.Module,
    objectives: Sequence[Objective],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    settings: OptimizeSettings = OptimizeSettings(),
    *,
    model_name: str = "model",
    transform: TransformSettings = TransformSettings(),
    limits: Limits = Limits(),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> torch.Tensor:
    """Render images that maximise ``objectives``: ``Tensor[N, 3, S, S]`` float32 in [0, 1].

    ``N = len(objectives)``, ``S = settings.size``. The network sees each image padded and
    randomly warped (``transform``, when ``settings.transforms``), then normalised with
    ``mean``/``std``. Raises :class:`UnknownLayerError`, :class:`InvalidParameterError` for
    bad requests (before any work) and :class:`CancelledError` when ``cancel`` is set.
    The module is left as it was found: eval/train mode restored, no hooks, no gradients.
    """
    objectives = list(objectives)
    validate_settings(settings, limits, len(objectives))
    layers = list(dict.fromkeys(name for o in objectives for name in o.layers))
    resolve_layers(module, layers, model_name)
    device = module_device(module)
    generator = torch.Generator().manual_seed(settings.seed)
    pad = transform.pad if settings.transforms else 0
    run = _Run(settings.steps, progress, cancel, settings.preview_every)
    with eval_mode(module):
        shapes = layer_shapes(module, layers, settings.size + 2 * pad, mean, std, model_name)
        for objective in objectives:
            check_objective(objective, shapes)
        image = image_param(
            len(objectives),
            settings.size,
            generator=generator,
            kind=settings.param,
            decorrelate=settings.decorrelate,
            device=device,
        )
        optimizer = torch.optim.Adam([image.param], lr=settings.lr)
        with LayerTap(module, layers, model_name) as tap, torch.enable_grad():
            for _ in range(settings.steps):
                run.check()
                x = image()
                if settings.transforms:
                    x = random_transform(x, transform, generator)
                acts, _ = tap.run(standardize(x, mean, std))
                loss = _batch_loss(objectives, acts)
                (grad,) = torch.autograd.grad(loss, [image.param])
                image.param.grad = grad
                optimizer.step()
                run.step(lambda: image().detach())
        with torch.no_grad():
            return image().detach()


def deepdream(
    module: nn.Module,
    image: torch.Tensor,
    layer: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    settings: DreamSettings = DreamSettings(),
    *,
    objective: Objective | None = None,
    model_name: str = "model",
    max_size: int = 1024,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> torch.Tensor:
    """DeepDream ``image`` (``Tensor[3, H, W]`` in [0, 1]) on ``layer``: ``Tensor[3, H, W]``.

    Gradient ascent on the layer's mean squared activation (or ``objective``), octave by
    octave from small to full size, each step ``lr * g / mean|g|`` after a random roll of up
    to ``jitter`` pixels; the detail found at one octave is upscaled into the next. The input
    is not modified.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise InvalidParameterError("image", f"expected Tensor[3, H, W], got {list(image.shape)}")
    if max(image.shape[1:]) > max_size:
        raise InvalidParameterError(
            "image", f"expected sides <= {max_size}, got {list(image.shape[1:])}"
        )
    _check_positive("steps", settings.steps, 1000)
    _check_positive("octaves", settings.octaves, 8)
    _check_positive("lr", settings.lr, 1.0)
    if settings.octave_scale < 1.0:
        raise InvalidParameterError("octave_scale", f"expected >= 1, got {settings.octave_scale}")
    objective = objective or Objective.layer(layer)
    layers = list(objective.layers)
    resolve_layers(module, layers, model_name)
    device = module_device(module)
    generator = torch.Generator().manual_seed(settings.seed)
    base = image.detach().to(device, torch.float32).unsqueeze(0)
    height, width = base.shape[-2:]
    sizes = [
        (
            max(16, round(height / settings.octave_scale**k)),
            max(16, round(width / settings.octave_scale**k)),
        )
        for k in reversed(range(settings.octaves))
    ]
    run = _Run(settings.steps * len(sizes), progress, cancel, settings.preview_every)
    detail = torch.zeros_like(base)
    with eval_mode(module):
        with LayerTap(module, layers, model_name) as tap:
            for size in sizes:
                octave_base = F.interpolate(
                    base, size=size, mode="bilinear", align_corners=False, antialias=True
                )
                detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
                x = (octave_base + detail).clamp(0, 1)
                for _ in range(settings.steps):
                    run.check()
                    x = _dream_step(tap, objective, x, mean, std, settings, generator)
                    run.step(lambda x=x: x.detach())  # type: ignore[misc]
                detail = x - octave_base
        if tuple(x.shape[-2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x[0].clamp(0, 1).detach()


def _dream_step(
    tap: LayerTap,
    objective: Objective,
    x: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    settings: DreamSettings,
    generator: torch.Generator,
) -> torch.Tensor:
    """One normalised-gradient ascent step on ``Tensor[1, 3, H, W]``, with a random roll."""
    shift = [0, 0]
    if settings.jitter > 0:
        shift = torch.randint(
            -settings.jitter, settings.jitter + 1, (2,), generator=generator
        ).tolist()
    rolled = torch.roll(x, shifts=shift, dims=(2, 3)).requires_grad_(True)
    with torch.enable_grad():
        acts, _ = tap.run(standardize(rolled, mean, std))
        score = objective.value({name: out[0] for name, out in acts.items()})
        (grad,) = torch.autograd.grad(score, [rolled])
    grad = torch.roll(grad, shifts=[-shift[0], -shift[1]], dims=(2, 3))
    step = settings.lr * grad / grad.abs().mean().clamp_min(1e-8)
    return (x + step).clamp(0, 1).detach()
