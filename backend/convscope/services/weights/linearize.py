"""The linearised network: activation functions become the identity, for one thread's forwards.

Voss et al. ("Visualizing Weights", Distill 2021) multiply the weights of the layers between
two layers, nonlinearities set aside. Here that is a :class:`HookScope` on the served model,
so nothing is copied and other threads' forwards are untouched:

- activation modules (ReLU, ReLU6, LeakyReLU, ELU, SiLU, GELU, Hardswish, Mish, Tanh, ...)
  return their input unchanged;
- squeeze-excite blocks (timm ``SqueezeExcite``/``EffectiveSEModule``, torchvision
  ``SqueezeExcitation``) return their input unchanged, i.e. the gate is held at 1. The gate
  multiplies each channel by sigmoid(f(x)): a product of the input with a function of the
  input, which no choice of identity for the sigmoid makes linear; holding it constant keeps
  the map linear, and with no image to compute it from, 1 (every channel passed on as is) is
  the neutral constant. Stand-alone ``Sigmoid``/``Hardsigmoid`` modules (gates) are left to
  the SE rule: they are not replaced on their own;
- max pooling becomes average pooling over the same window (a max is piecewise linear with
  an input-dependent choice; the average is the linear map that weighs the window evenly);
- batch norm in eval mode is already affine; convolutions, linear layers, average pooling
  and residual additions are linear and kept as they are.

Functional activations (``F.relu`` called inside a ``forward``) are not modules and cannot be
hooked; the models convscope serves use modules (timm, torchvision ResNet/VGG/AlexNet/...).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convscope.services.models.hooks import HookScope

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Tanh,
    nn.Softplus,
)

# Squeeze-excite blocks by class name (timm's and torchvision's live in modules we do not
# want to import here just for an isinstance check).
SQUEEZE_EXCITE = frozenset({"SqueezeExcite", "SqueezeExcitation", "EffectiveSEModule", "SEModule"})


def role(module: nn.Module) -> str | None:
    """What the linearisation does to ``module``: 'identity', 'avg_pool' or None (kept)."""
    if isinstance(module, ACTIVATIONS) or type(module).__name__ in SQUEEZE_EXCITE:
        return "identity"
    if isinstance(module, nn.MaxPool2d | nn.AdaptiveMaxPool2d):
        return "avg_pool"
    return None


def _as_average(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The mean over each window that ``module`` (max pooling) took the max of; ``out`` is the
    max-pooled output, whose shape the average must have."""
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return F.adaptive_avg_pool2d(x, module.output_size)
    assert isinstance(module, nn.MaxPool2d)
    if module.dilation in (1, (1, 1)):
        return F.avg_pool2d(
            x,
            module.kernel_size,
            module.stride,
            module.padding,
            ceil_mode=module.ceil_mode,
            count_include_pad=False,  # max pooling pads with -inf: padding never counts
        )
    # Dilated windows: a depthwise conv with ones sums each window, the same conv over a mask
    # of ones counts its pixels inside the image (padding never counts). Extra zeros at the
    # bottom and right give ceil_mode's last windows.
    kernel, stride, padding, dilation = (
        tuple(v) if isinstance(v, tuple | list) else (v, v)
        for v in (module.kernel_size, module.stride, module.padding, module.dilation)
    )
    extra = [
        max(0, (n_out - 1) * s + d * (k - 1) + 1 - (n + 2 * p))
        for n_out, s, d, k, n, p in zip(
            out.shape[-2:], stride, dilation, kernel, x.shape[-2:], padding, strict=True
        )
    ]
    channels = x.shape[1]
    ones = x.new_ones(channels, 1, *kernel)
    padded = F.pad(x, (0, extra[1], 0, extra[0]))
    mask = F.pad(torch.ones_like(x), (0, extra[1], 0, extra[0]))

    def window_sum(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, ones, stride=stride, padding=padding, dilation=dilation, groups=channels)

    return window_sum(padded) / window_sum(mask)


def linearize(scope: HookScope, model: nn.Module) -> int:
    """Install, in ``scope``, the hooks that linearise ``model``; returns how many modules.

    An in-place activation (``ReLU(inplace=True)``) would already have overwritten its input
    by the time a forward hook runs, so its pre-hook hands the module a copy and keeps the
    original, which the forward hook returns.
    """
    count = 0
    for _, module in model.named_modules():
        kind = role(module)
        if kind is None:
            continue
        count += 1
        if kind == "avg_pool":
            scope.forward(module, lambda m, inputs, out: _as_average(m, inputs[0], out))
            continue
        kept: dict[str, Any] = {}

        def keep(_m: nn.Module, inputs: Any, kept: dict[str, Any] = kept) -> Any:
            kept["x"] = inputs[0]
            return (inputs[0].clone(), *inputs[1:])

        def restore(_m: nn.Module, inputs: Any, _out: Any, kept: dict[str, Any] = kept) -> Any:
            return kept.pop("x", inputs[0])

        if getattr(module, "inplace", False):
            scope.pre_forward(module, keep)
            scope.forward(module, restore)
        else:
            scope.forward(module, lambda _m, inputs, _out: inputs[0])
    return count
