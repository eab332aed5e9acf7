"""Capture module outputs during one forward pass: scoped hooks, outputs kept without copies."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from convscope.errors import NoActivationError
from convscope.services.models.hooks import HookScope, LayerTap, eval_mode
from convscope.services.models.registry import ROOT_LAYER, LoadedModel


@dataclass(frozen=True)
class Capture:
    """The outputs of one forward pass of one image.

    ``maps[name]`` is the output of module ``name`` for the image: float32 ``Tensor[C, H, W]``
    for spatial outputs, ``Tensor[F]`` for flat ones, on the CPU, possibly non-contiguous.
    ``logits`` is ``Tensor[num_classes]``. Tensors shared between modules (an ``Identity``, a
    block returning its last layer's output untouched) are stored once. Read-only: the
    tensors may be shared by every request for the same image.
    """

    maps: dict[str, torch.Tensor]
    logits: torch.Tensor
    nbytes: int


@dataclass
class _Saved:
    tensor: torch.Tensor
    version: int  # the output's version counter when the hook saw it
    copied: bool


def capture(model: LoadedModel, x: torch.Tensor, layers: Collection[str] | None = None) -> Capture:
    """Run ``model`` on ``x`` (``Tensor[3, S, S]``); keep the outputs of ``layers`` (all if None).

    Hooks live only during this call, are removed in ``finally`` and ignore forwards run by
    other threads; the model's lock keeps other captures out meanwhile.

    Outputs are kept by reference, not copied: the forward's own buffers become the capture.
    Only an output that a later op changes in place (``ReLU(inplace=True)`` after a conv, a
    residual ``out += identity``) must be copied when its hook runs. Which outputs those are is
    learned from the version counters (an in-place op bumps the counter of every view of the
    storage) and remembered in ``model.inplace_outputs``; when a forward changes an output
    that was not copied, the forward is run again with copies, so what we return is always
    what each module produced.
    """
    wanted = None if layers is None else set(layers)
    with model.lock:
        result, changed = _forward(model, x, wanted, copy=model.inplace_outputs)
        if changed:
            model.inplace_outputs.update(changed)
            result, changed = _forward(model, x, wanted, copy=None)
    return result


def _forward(
    model: LoadedModel, x: torch.Tensor, wanted: set[str] | None, copy: set[str] | None
) -> tuple[Capture, set[str]]:
    """One hooked forward. ``copy``: names whose outputs are copied at hook time (None: all).

    Returns the capture and the names whose kept (uncopied) output changed after its hook ran.
    """
    saved: dict[tuple[int, int, tuple[int, ...]], _Saved] = {}
    latest: dict[str, _Saved] = {}  # a module called twice keeps its last output
    alive: list[torch.Tensor] = []  # copied outputs' sources: their addresses stay unique

    def make_hook(name: str):
        copy_this = copy is None or name in copy

        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() < 2:
                return
            # Same storage, same version counter, same shape: the very same values.
            key = (output.data_ptr(), output._version, tuple(output.shape))
            entry = saved.get(key)
            if entry is None:
                single = output[0].detach()
                copied = copy_this or single.dtype != torch.float32
                if copied:
                    single = single.to(torch.float32, copy=True)
                    alive.append(output)
                entry = saved[key] = _Saved(single, output._version, copied)
            latest[name] = entry

        return hook

    module = model.module
    with HookScope() as hooks:
        for name, sub in model.named_modules():
            if wanted is None or name in wanted:
                hooks.forward(sub, make_hook(name))
        # no_grad rather than inference_mode: inference tensors have no version counter,
        # which both the de-duplication and the in-place detection rely on.
        with eval_mode(module), torch.no_grad():
            logits = module(x.unsqueeze(0).to(model.device))
    alive.clear()
    changed = {
        name
        for name, entry in latest.items()
        if not entry.copied and entry.tensor._version != entry.version
    }
    on_cpu = {id(entry): entry.tensor.cpu() for entry in latest.values()}
    maps = {name: on_cpu[id(entry)] for name, entry in latest.items()}
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in on_cpu.values()
    }
    logits = logits[0].detach().to("cpu", torch.float32)
    nbytes = sum(storages.values()) + logits.numel() * logits.element_size()
    return Capture(maps=maps, logits=logits, nbytes=nbytes), changed


def layer_output(model: LoadedModel, x: torch.Tensor, layer: str) -> torch.Tensor | None:
    """The output of one module for one image (``Tensor[3, S, S]``), for one-shot requests.

    Unlike :func:`capture` it hooks only ``layer``, stops the forward as soon as that module
    has run (nothing after it is computed), and takes no model lock: its hook is thread-scoped
    and nothing it keeps can be changed in place by a later op, since no later op runs. For
    a module that runs more than once per forward (its last output counts) it falls back to
    a full capture. Returns float32 ``Tensor[C, H, W]`` or ``[F]`` on the CPU, or None when
    the module's output is not a batched tensor.
    """
    if model.layer(layer).calls != 1 or layer == ROOT_LAYER:
        return capture(model, x, {layer}).maps.get(layer)
    try:
        with (
            eval_mode(model.module),
            torch.no_grad(),
            LayerTap(model.module, [layer], model.name) as tap,
        ):
            outputs, _ = tap.run(x.unsqueeze(0).to(model.device))
    except NoActivationError:
        return None
    out = outputs[layer]
    return out[0].to("cpu", torch.float32) if out.dim() >= 2 else None
