"""A model's layers: every module by dotted ``named_modules()`` name, in forward order."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from convscope.services.models.hooks import HookScope


@dataclass(frozen=True)
class LayerInfo:
    """One module. ``output_shape`` is per image (no batch dim): [C, H, W] or [F]."""

    index: int
    name: str
    type: str
    depth: int
    output_shape: list[int] | None
    params: dict[str, list[int]]
    has_filters: bool
    has_activation: bool
    calls: int
    finished: int = -1  # position in the order modules finished their (last) call; -1: never
    conv: dict[str, Any] | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["finished"]
        if self.conv is not None:
            data.update(self.conv)
        return data


def _conv_attrs(module: nn.Module) -> dict[str, Any] | None:
    if not isinstance(module, nn.Conv2d):
        return None
    return {
        "in_channels": module.in_channels,
        "out_channels": module.out_channels,
        "kernel_size": list(module.kernel_size),
        "stride": list(module.stride),
        "groups": module.groups,
        "depthwise": module.groups == module.in_channels and module.groups > 1,
    }


def trace_layers(model: nn.Module, input_size: tuple[int, int]) -> list[LayerInfo]:
    """Run one zero image through ``model`` and record each module's output shape and order.

    Modules are ordered by their first call; modules never called (e.g. an auxiliary head in
    eval mode) come last with ``output_shape`` None. The root module is named ``output``.
    """
    order: dict[str, int] = {}
    finished: dict[str, int] = {}
    shapes: dict[str, list[int] | None] = {}
    calls: dict[str, int] = {}

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            finished[name] = len(finished)
            shapes[name] = (
                list(output.shape[1:])
                if isinstance(output, torch.Tensor) and output.dim() >= 2
                else None
            )

        return hook

    def make_pre_hook(name: str):
        def pre_hook(_module: nn.Module, _inputs: Any) -> None:
            order.setdefault(name, len(order))  # call order: a block before its children

        return pre_hook

    named = list(model.named_modules())
    with HookScope() as hooks:
        for name, module in named:
            hooks.forward(module, make_hook(name or "output"))
            hooks.pre_forward(module, make_pre_hook(name or "output"))
        device = next(model.parameters(), torch.empty(0)).device  # cuda models: cuda input
        with torch.inference_mode():
            model(torch.zeros(1, 3, *input_size, device=device))

    infos = []
    for position, (raw_name, module) in enumerate(named):
        name = raw_name or "output"
        shape = shapes.get(name)
        infos.append(
            (
                order.get(name, len(named) + position),
                LayerInfo(
                    index=0,
                    name=name,
                    type=type(module).__name__,
                    depth=0 if not raw_name else raw_name.count(".") + 1,
                    output_shape=shape,
                    params={k: list(p.shape) for k, p in module.named_parameters(recurse=False)},
                    has_filters=isinstance(module, nn.Conv2d),
                    has_activation=shape is not None and len(shape) in (1, 3),
                    calls=calls.get(name, 0),
                    finished=finished.get(name, -1),
                    conv=_conv_attrs(module),
                ),
            )
        )
    # The root ("output", i.e. the logits) is called first but is the final result: list it last.
    infos.sort(key=lambda item: (item[1].name == "output", item[0]))
    return [LayerInfo(**{**asdict(info), "index": i}) for i, (_, info) in enumerate(infos)]


def default_cam_layer(layers: list[LayerInfo]) -> str | None:
    """The last module to finish whose output is spatial (``[C, H, W]`` with H * W > 1).

    That is the final feature map before pooling: ``bn2`` for efficientnet-lite0 (its
    activation included), ``layer4`` for a ResNet, ``features`` for VGG/AlexNet. Read from
    the layer table traced at load: no forward pass. None when no module has one.
    """
    spatial = [
        info
        for info in layers
        if info.name != "output"
        and info.output_shape is not None
        and len(info.output_shape) == 3
        and info.output_shape[1] * info.output_shape[2] > 1
        and info.finished >= 0
    ]
    return max(spatial, key=lambda info: info.finished).name if spatial else None
