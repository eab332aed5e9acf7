"""Expanded weights: how one channel of a layer connects to the image or to an earlier layer.

In the linearised network (``linearize.py``) the map from ``onto``'s output to layer ``L`` is
affine, so its gradient is the same for every input: it is the product of the weights in
between. The expanded weights of channel ``c`` of ``L`` are the gradient of ``L[c]`` at the
centre position w.r.t. ``onto``'s output (or the standardised input image), restricted to the
box where it is non-zero: the receptive field, clipped to ``onto``'s extent.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convscope.errors import InvalidParameterError, NoActivationError
from convscope.services.models.hooks import HookScope, resolve_layers
from convscope.services.weights.linearize import linearize

INPUT = "input"


class _Reached(Exception):
    """Raised by the hook on ``L`` once its output is kept: the rest of the forward is moot."""


@dataclass(frozen=True)
class Expanded:
    """Expanded weights of ``layer[channel]`` onto ``onto``.

    ``values``: float32 ``Tensor[C_onto, h, w]``, the gradient inside ``box``.
    ``box``: (top, left, bottom, right) in ``onto``'s coordinates, bottom/right exclusive.
    ``position``: the (y, x) of ``layer``'s output the gradient is taken at (None: flat).
    ``onto_shape``: ``[C_onto, H, W]`` of the whole ``onto`` tensor.
    """

    layer: str
    channel: int
    onto: str
    values: torch.Tensor
    box: tuple[int, int, int, int]
    position: tuple[int, int] | None
    onto_shape: tuple[int, ...]

    @property
    def norms(self) -> torch.Tensor:
        """Per input channel L2 norm, float32 ``Tensor[C_onto]``."""
        return self.values.flatten(1).norm(dim=1)

    @property
    def nbytes(self) -> int:
        return self.values.numel() * 4 + 256


def support_box(grad: torch.Tensor) -> tuple[int, int, int, int]:
    """Bounding box (top, left, bottom, right; exclusive) of the non-zero part of ``[C, H, W]``.

    An all-zero gradient (a dead channel) keeps the whole extent.
    """
    mask = grad.ne(0).any(0)
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if rows.numel() == 0:
        return (0, 0, grad.shape[1], grad.shape[2])
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def expanded_weights(
    module: nn.Module,
    layer: str,
    channel: int,
    onto: str,
    x: torch.Tensor,
    model_name: str,
) -> Expanded:
    """Expanded weights of ``layer[channel]`` onto ``onto`` (``"input"`` or a module name).

    ``x``: ``Tensor[1, 3, H, W]`` on the model's device; in the linearised network the result
    does not depend on it (zeros will do). ``module`` must be in eval mode with parameters
    that do not require grad (as every served model is). Hooks live only during the call.
    """
    names = [layer] if onto == INPUT else [layer, onto]
    targets = resolve_layers(module, names, model_name)
    if onto == layer:
        raise InvalidParameterError("onto", f"expected a layer before {layer!r}, got itself")
    kept: dict[str, torch.Tensor] = {}

    def on_onto(_m: nn.Module, _inputs: Any, output: Any) -> Any:
        if "onto" in kept or not isinstance(output, torch.Tensor):
            return None
        leaf = output.detach().requires_grad_(True)
        kept["onto"] = leaf
        return leaf.clone()  # a later in-place op (out += identity) must not touch the leaf

    def on_layer(_m: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            return None
        kept["layer"] = output
        raise _Reached

    with HookScope() as scope, torch.enable_grad():
        linearize(scope, module)
        if onto != INPUT:
            scope.forward(targets[onto], on_onto)
        scope.forward(targets[layer], on_layer)
        if onto == INPUT:
            x = x.detach().clone().requires_grad_(True)
            kept["onto"] = x
        with contextlib.suppress(_Reached):
            module(x)
        out = kept.get("layer")
        if out is None:
            raise NoActivationError(model_name, layer, "the layer returned no tensor")
        if "onto" not in kept:
            raise InvalidParameterError(
                "onto",
                f"{onto!r} does not run before {layer!r} in the forward pass; expected 'input' "
                f"or a layer earlier than {layer!r} (see GET /api/models/{model_name}/layers)",
            )
        count = out.shape[1]
        if not 0 <= channel < count:
            raise InvalidParameterError(
                "channel", f"expected 0 <= channel < {count} (channels of {layer!r}), got {channel}"
            )
        position: tuple[int, int] | None = None
        if out.dim() == 4:
            position = (out.shape[2] // 2, out.shape[3] // 2)
            target = out[0, channel, position[0], position[1]]
        elif out.dim() == 2:
            target = out[0, channel]
        else:
            raise NoActivationError(
                model_name,
                layer,
                f"expected an output [N, C, H, W] or [N, F], got {list(out.shape)}",
            )
        leaf = kept["onto"]
        if not target.requires_grad:
            raise _not_upstream(onto, layer, model_name)
        (grad,) = torch.autograd.grad(target, leaf, allow_unused=True)
    if grad is None:
        raise _not_upstream(onto, layer, model_name)
    grad = grad[0].detach().to("cpu", torch.float32)
    if grad.dim() != 3:
        raise InvalidParameterError(
            "onto",
            f"expected a layer with a spatial output [C, H, W], {onto!r} has {list(grad.shape)}",
        )
    box = support_box(grad)
    top, left, bottom, right = box
    return Expanded(
        layer=layer,
        channel=channel,
        onto=onto,
        values=grad[:, top:bottom, left:right].contiguous(),
        box=box,
        position=position,
        onto_shape=tuple(grad.shape),
    )


def _not_upstream(onto: str, layer: str, model_name: str) -> InvalidParameterError:
    return InvalidParameterError(
        "onto",
        f"{layer!r} does not depend on {onto!r}; expected 'input' or a layer on the path to "
        f"{layer!r} (see GET /api/models/{model_name}/layers)",
    )
