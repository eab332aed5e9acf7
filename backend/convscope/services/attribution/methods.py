"""Attribution: which pixels or regions made the network predict a class.

- Class activation maps on a layer: Grad-CAM, Grad-CAM++ and Score-CAM, following
  pytorch-grad-cam's definitions (the tests check agreement with it).
- Input gradients: vanilla saliency, SmoothGrad (seeded noise) and guided backpropagation.

Images come in as ``Tensor[3, H, W]`` float32 in [0, 1]; the model's ``mean``/``std`` are
applied here. Gradients are taken w.r.t. the [0, 1] image, never w.r.t. the model's
parameters; hooks are removed and the train/eval mode restored on the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from convscope.errors import InvalidParameterError
from convscope.services.models.device import module_device
from convscope.services.models.hooks import HookScope, LayerTap, eval_mode, resolve_layers
from convscope.services.models.preprocess import standardize

CamMethod = Literal["gradcam", "gradcampp", "scorecam"]
SaliencyMethod = Literal["vanilla", "smoothgrad", "guided"]
Progress = Callable[[int, int], None]
"""``progress(step, total)``: called between batches; may raise to stop (a cancelled job)."""


@dataclass(frozen=True)
class CamResult:
    """``heatmap``: ``Tensor[H, W]`` float32 in [0, 1] at input resolution.
    ``cam``: the raw map ``Tensor[h, w]`` at the layer's resolution (after the ReLU, before
    any scaling). ``score``: the class logit."""

    heatmap: torch.Tensor
    cam: torch.Tensor
    class_index: int
    score: float
    layer: str
    method: str


@dataclass(frozen=True)
class SaliencyResult:
    """``saliency``: ``Tensor[H, W]`` float32 >= 0, max |gradient| over colour channels.
    ``gradient``: ``Tensor[3, H, W]`` float32, d logit / d image (averaged for SmoothGrad)."""

    saliency: torch.Tensor
    gradient: torch.Tensor
    class_index: int
    score: float
    method: str


def _check_image(image: torch.Tensor) -> None:
    if image.dim() != 3 or image.shape[0] != 3:
        raise InvalidParameterError("image", f"expected Tensor[3, H, W], got {list(image.shape)}")


def _pick_class(logits: torch.Tensor, class_index: int | None) -> int:
    """``class_index`` checked against ``logits`` (``Tensor[K]``), or the top-1 class."""
    count = logits.shape[-1]
    if class_index is None:
        return int(logits.argmax())
    if not 0 <= class_index < count:
        raise InvalidParameterError(
            "class_index", f"expected 0 <= class_index < {count}, got {class_index}"
        )
    return class_index


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image``: ``(x - min) / (max - min + 1e-7)``."""
    x = x - x.amin()
    return x / (x.amax() + 1e-7)


def cam(
    module: nn.Module,
    image: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    layer: str,
    class_index: int | None = None,
    method: CamMethod = "gradcam",
    model_name: str = "model",
    batch_size: int = 32,
    progress: Progress | None = None,
) -> CamResult:
    """Class activation map of ``image`` (``Tensor[3, H, W]`` in [0, 1]) for one class.

    ``layer``: a module with a spatial output (the registry's ``LoadedModel.cam_layer`` is
    the usual choice); ``class_index`` defaults to the top-1 class.
    - gradcam: ``relu(sum_c mean_hw(dy/dA_c) * A_c)``;
    - gradcampp: Grad-CAM++ weights (Chattopadhay et al. 2018, eq. 19);
    - scorecam: weights = softmax over channels of the class logit for the image masked by
      each min-max-normalised, upsampled channel (one forward per channel, ``batch_size`` at
      a time; ``progress(done, channels)`` after each batch).
    """
    _check_image(image)
    height, width = image.shape[1:]
    resolve_layers(module, [layer], model_name)
    x = standardize(image.to(module_device(module), torch.float32).unsqueeze(0), mean, std)
    with eval_mode(module), LayerTap(module, [layer], model_name, stop_early=False) as tap:
        with torch.enable_grad():
            # The input requires grad so the layer output has a graph even when the model's
            # parameters are frozen (the registry freezes them).
            acts, logits = tap.run(x.detach().requires_grad_(True))
            act = acts[layer]
            if logits is None or act.dim() != 4:
                raise InvalidParameterError(
                    "layer",
                    f"expected a layer with a spatial output [C, H, W]; {layer!r} "
                    f"outputs {list(act.shape[1:])}",
                )
            index = _pick_class(logits[0], class_index)
            score = logits[0, index]
            if method == "scorecam":
                weights = _scorecam_weights(module, x, act.detach()[0], index, batch_size, progress)
            else:
                (grad,) = torch.autograd.grad(score, [act])
                weights = (
                    grad[0].mean(dim=(1, 2))
                    if method == "gradcam"
                    else _gradcampp_weights(act.detach()[0], grad[0])
                )
        a = act.detach()[0]
    raw = torch.relu((weights.view(-1, 1, 1) * a).sum(0))
    up = F.interpolate(
        _minmax(raw)[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0]
    return CamResult(_minmax(up).cpu(), raw.cpu(), index, float(score.detach()), layer, method)


def _gradcampp_weights(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights ``Tensor[C]`` from ``act`` and ``grad`` ``Tensor[C, h, w]``."""
    g2 = grad.square()
    g3 = g2 * grad
    sum_act = act.sum(dim=(1, 2), keepdim=True)
    alpha = g2 / (2 * g2 + sum_act * g3 + 1e-6)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    return (torch.relu(grad) * alpha).sum(dim=(1, 2))


@torch.no_grad()
def _scorecam_weights(
    module: nn.Module,
    x: torch.Tensor,
    act: torch.Tensor,
    index: int,
    batch_size: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Score-CAM weights ``Tensor[C]``: softmax of the class logit over masked inputs."""
    masks = F.interpolate(act[None], size=x.shape[-2:], mode="bilinear", align_corners=True)[0]
    flat = masks.flatten(1)
    lo = flat.amin(1).view(-1, 1, 1)
    hi = flat.amax(1).view(-1, 1, 1)
    masks = (masks - lo) / (hi - lo + 1e-8)
    scores = []
    for start in range(0, masks.shape[0], batch_size):
        chunk = masks[start : start + batch_size]
        scores.append(module(x * chunk[:, None])[:, index])
        if progress is not None:
            progress(min(start + batch_size, masks.shape[0]), masks.shape[0])
    return torch.softmax(torch.cat(scores), dim=0)


class _GuidedGrad(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through (guided backprop)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


@contextmanager
def _guided_relus(module: nn.Module) -> Iterator[int]:
    """Make every ``nn.ReLU``/``nn.ReLU6`` pass back only positive gradients; yields the count.

    A forward hook wraps each ReLU output in :class:`_GuidedGrad`, so the chain rule gives
    ``grad_in = [x > 0] * relu(grad_out)`` (and ``[x < 6]`` for ReLU6). Hooks react only to
    this thread's forwards and are removed on exit.
    """

    def hook(_m: nn.Module, _i: Any, output: torch.Tensor) -> torch.Tensor:
        return _GuidedGrad.apply(output)

    with HookScope() as hooks:
        for m in module.modules():
            if isinstance(m, nn.ReLU | nn.ReLU6):
                hooks.forward(m, hook)
        yield hooks.count


def _input_gradient(
    module: nn.Module,
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """d logit[index] / d images for ``Tensor[N, 3, H, W]``; returns (grads, logits[:, index])."""
    with torch.enable_grad():
        leaf = images.detach().requires_grad_(True)
        scores = module(standardize(leaf, mean, std))[:, index]
        (grad,) = torch.autograd.grad(scores.sum(), [leaf])
    return grad, scores.detach()


def saliency(
    module: nn.Module,
    image: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    class_index: int | None = None,
    method: SaliencyMethod = "vanilla",
    samples: int = 16,
    noise: float = 0.15,
    seed: int = 0,
    batch_size: int = 8,
    max_samples: int = 128,
    progress: Progress | None = None,
) -> SaliencyResult:
    """Gradient of the class logit w.r.t. ``image`` (``Tensor[3, H, W]`` in [0, 1]).

    - vanilla: the plain gradient (Simonyan et al. 2014);
    - smoothgrad: the mean gradient over ``samples`` copies with Gaussian noise of std
      ``noise * (max - min)`` of the image, drawn from a generator seeded with ``seed``;
    - guided: guided backpropagation through every ``nn.ReLU``/``nn.ReLU6`` module.
    ``class_index`` defaults to the top-1 class of the clean image.
    """
    _check_image(image)
    if method == "smoothgrad":
        if not 1 <= samples <= max_samples:
            raise InvalidParameterError(
                "samples", f"expected 1 <= samples <= {max_samples}, got {samples}"
            )
        if not 0.0 <= noise <= 1.0:
            raise InvalidParameterError("noise", f"expected 0 <= noise <= 1, got {noise}")
    x = image.to(module_device(module), torch.float32).unsqueeze(0)
    with eval_mode(module):
        with torch.no_grad():
            index = _pick_class(module(standardize(x, mean, std))[0], class_index)
        if method == "guided":
            with _guided_relus(module) as count:
                if count == 0:
                    raise InvalidParameterError(
                        "method",
                        "guided backprop needs nn.ReLU or nn.ReLU6 modules; this "
                        "model has none (it may use functional activations): use vanilla",
                    )
                grad, scores = _input_gradient(module, x, mean, std, index)
        elif method == "vanilla":
            grad, scores = _input_gradient(module, x, mean, std, index)
        else:
            generator = torch.Generator().manual_seed(seed)
            sigma = noise * float(image.amax() - image.amin())
            total = torch.zeros_like(x)
            score_sum = 0.0
            for start in range(0, samples, batch_size):
                n = min(batch_size, samples - start)
                eps = torch.randn((n, *x.shape[1:]), generator=generator).to(x.device)
                g, s = _input_gradient(module, x + sigma * eps, mean, std, index)
                total += g.sum(0, keepdim=True)
                score_sum += float(s.sum())
                if progress is not None:
                    progress(start + n, samples)
            grad, scores = total / samples, torch.tensor([score_sum / samples])
    gradient = grad[0].detach().cpu()
    return SaliencyResult(gradient.abs().amax(0), gradient, index, float(scores[0]), method)
