"""The one device helper: where models run (``CONVSCOPE_DEVICE``), and where a module is."""

from __future__ import annotations

import torch
from torch import nn

from convscope.errors import ConvscopeError


def resolve_device(setting: str) -> torch.device:
    """``CONVSCOPE_DEVICE`` -> a device: 'cpu', 'cuda', 'cuda:N', or 'auto' (CUDA when present)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device: torch.device | None = torch.device(setting)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConvscopeError(
            f"CONVSCOPE_DEVICE: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {setting!r}"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConvscopeError(
                f"CONVSCOPE_DEVICE={setting!r} asked for, but CUDA is not available (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use 'cpu' or "
                "'auto'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConvscopeError(
                f"CONVSCOPE_DEVICE={setting!r}: expected a GPU index below "
                f"{torch.cuda.device_count()}"
            )
    return device


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU for a module without any)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
