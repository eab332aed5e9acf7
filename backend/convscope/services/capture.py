"""Capture module outputs during one forward pass: scoped hooks, detached clones."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from convscope.services.registry import ROOT_LAYER, LoadedModel


@dataclass(frozen=True)
class Capture:
    """The outputs of one forward pass of one image.

    ``maps[name]`` is the output of module ``name`` for the image: float32 ``Tensor[C, H, W]``
    for spatial outputs, ``Tensor[F]`` for flat ones. ``logits`` is ``Tensor[num_classes]``.
    Tensors shared between modules (an ``Identity``, a block returning its last layer's
    output untouched) are stored once.
    """

    maps: dict[str, torch.Tensor]
    logits: torch.Tensor
    input: torch.Tensor  # Tensor[3, S, S], the normalised network input
    nbytes: int


def capture(model: LoadedModel, x: torch.Tensor, layers: Collection[str] | None = None) -> Capture:
    """Run ``model`` on ``x`` (``Tensor[3, S, S]``); keep the outputs of ``layers`` (all if None).

    Hooks live only during this call and are removed in ``finally``; the model's lock keeps
    other requests' forwards out meanwhile. Each output is cloned at hook time, so an in-place
    op later in the forward (``ReLU(inplace=True)`` after a conv) cannot change what we saw.
    """
    wanted = None if layers is None else set(layers)
    maps: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], torch.Tensor] = {}
    alive: list[torch.Tensor] = []  # keeps captured storages from being reused mid-forward
    nbytes = 0

    def make_hook(name: str):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            nonlocal nbytes
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                return
            # Same storage, same version counter, same shape: the very same values.
            key = (output.data_ptr(), output._version, tuple(output.shape))
            saved = seen.get(key)
            if saved is None:
                saved = output[0].detach().to("cpu", torch.float32, copy=True)
                seen[key] = saved
                alive.append(output)
                nbytes += saved.numel() * saved.element_size()
            maps[name] = saved

        return hook

    handles = []
    module = model.module
    was_training = module.training
    with model.lock:
        try:
            for name, sub in module.named_modules():
                name = name or ROOT_LAYER
                if wanted is None or name in wanted:
                    handles.append(sub.register_forward_hook(make_hook(name)))
            module.eval()
            # no_grad rather than inference_mode: inference tensors have no version counter,
            # which the de-duplication above relies on.
            with torch.no_grad():
                logits = module(x.unsqueeze(0).to(model.device))
        finally:
            for handle in handles:
                handle.remove()
            module.train(was_training)
            alive.clear()
    logits = logits[0].detach().to("cpu", torch.float32)
    return Capture(maps=maps, logits=logits, input=x, nbytes=nbytes + x.numel() * 4)
