"""The one hook primitive: forward hooks scoped to a ``with`` block and to one thread.

Every capture, tap, layer trace, CAM layer and guided ReLU installs its hooks through
:class:`HookScope`: hooks fire only for forwards run by the thread that opened the scope (a
served model is shared by concurrent requests), and are removed on exit, error or not.
:class:`LayerTap` builds on it to keep layer outputs WITH their graph, for gradients w.r.t.
them; ``inspection/capture.py`` keeps detached outputs for display.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch
from torch import nn

from convscope.errors import NoActivationError, UnknownLayerError

ForwardHook = Callable[[nn.Module, Any, Any], Any]
PreHook = Callable[[nn.Module, Any], Any]


class HookScope:
    """Context manager owning forward (and pre-forward) hooks for one thread.

    ``scope.forward(module, fn)`` registers ``fn(module, inputs, output)``; it runs only when
    the thread that entered the scope runs the forward (other threads' forwards on the same
    module see no hook), and what it returns replaces the output as usual. All hooks are
    removed when the scope exits.
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._thread = threading.get_ident()

    def __enter__(self) -> HookScope:
        self._thread = threading.get_ident()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    @property
    def count(self) -> int:
        return len(self._handles)

    def forward(self, module: nn.Module, fn: ForwardHook) -> None:
        owner = self._thread

        def hook(m: nn.Module, inputs: Any, output: Any) -> Any:
            return fn(m, inputs, output) if threading.get_ident() == owner else None

        self._handles.append(module.register_forward_hook(hook))

    def pre_forward(self, module: nn.Module, fn: PreHook) -> None:
        owner = self._thread

        def hook(m: nn.Module, inputs: Any) -> Any:
            return fn(m, inputs) if threading.get_ident() == owner else None

        self._handles.append(module.register_forward_pre_hook(hook))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode, and put it back as it was.

    A module already in eval mode, as every served model is, is left alone: ``eval()`` and
    ``train()`` each walk every submodule (~1.5 ms apiece for EfficientNet-Lite0's 266), which
    was a fifth of what a capture added to the plain forward pass.
    """
    if not module.training:
        yield
        return
    module.eval()
    try:
        yield
    finally:
        module.train()


class _StopForward(Exception):
    """Raised by a hook once every tapped layer has run; caught by :meth:`LayerTap.run`."""


def resolve_layers(
    module: nn.Module, layers: Iterable[str], model_name: str
) -> dict[str, nn.Module]:
    """Map dotted ``named_modules()`` names to modules; unknown names raise UnknownLayerError."""
    named = dict(module.named_modules())
    found = {}
    for layer in layers:
        if layer not in named or layer == "":
            raise UnknownLayerError(model_name, layer)
        found[layer] = named[layer]
    return found


class LayerTap(HookScope):
    """A :class:`HookScope` on named layers: during ``with``, :meth:`run` returns
    ``{layer: output}`` for a batch.

    Outputs keep their autograd graph. Each hook hands the rest of the network a clone, so
    an in-place op downstream (``ReLU(inplace=True)``) cannot change the tapped tensor.
    With ``stop_early`` the forward is aborted after the last tapped layer has run.
    """

    def __init__(
        self, module: nn.Module, layers: Sequence[str], model_name: str, *, stop_early: bool = True
    ) -> None:
        self.module = module
        self.model_name = model_name
        self.targets = resolve_layers(module, layers, model_name)
        self.stop_early = stop_early
        self.outputs: dict[str, torch.Tensor] = {}
        super().__init__()

    def _hook(self, name: str) -> ForwardHook:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if name in self.outputs or not isinstance(output, torch.Tensor):
                return None  # a module called twice, or no tensor to keep
            self.outputs[name] = output
            if self.stop_early and len(self.outputs) == len(self.targets):
                raise _StopForward
            return output.clone()

        return hook

    def __enter__(self) -> LayerTap:
        super().__enter__()
        try:
            for name, target in self.targets.items():
                self.forward(target, self._hook(name))
        except BaseException:
            self.remove()
            raise
        return self

    def run(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Forward ``Tensor[N, 3, H, W]``; return the tapped outputs and the model output.

        The model output is None when the forward stopped early.
        """
        self.outputs = {}
        try:
            result = self.module(x)
        except _StopForward:
            result = None
        missing = [name for name in self.targets if name not in self.outputs]
        if missing:
            raise NoActivationError(
                self.model_name,
                missing[0],
                "the layer did not run or returned no tensor during the forward pass",
            )
        return self.outputs, result if isinstance(result, torch.Tensor) else None
