"""From a PyTorch checkpoint (``.pth``) to a model folder: manifest + ``model.safetensors``.

Runs on the user's own machine, on the user's own file (``convscope convert``): the checkpoint
is read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects. The
server itself never opens a pickle. The written folder is then checked the way the server
checks it (``weights_file.load_checked``: keys, shapes, finite values) before this returns.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from convscope.errors import InvalidModelFileError
from convscope.services.models import sources, weights_file

log = logging.getLogger(__name__)

# Where training scripts commonly keep the state dict inside a checkpoint.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth``/``.pt`` checkpoint, read with ``weights_only=True``.

    A state dict, or one nested under a usual key (``state_dict``, ``model``, ...). A pickled
    model object (``torch.save(model)``) is refused with how to save its state dict instead.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InvalidModelFileError(
            f"{path.name} holds more than tensors (e.g. a whole pickled model), which "
            "torch.load(weights_only=True) refuses to run; save only the weights: "
            f"torch.save(model.state_dict(), 'weights.pth') ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InvalidModelFileError(f"{path.name} is not a PyTorch checkpoint: {exc}") from None
    for _ in range(2):  # {"state_dict": {...}} or {"model": {"state_dict": ...}}
        if isinstance(data, Mapping) and not _is_state_dict(data):
            inner = next(
                (data[k] for k in CONTAINER_KEYS if isinstance(data.get(k), Mapping)), None
            )
            if inner is None:
                break
            data = inner
    if not isinstance(data, Mapping) or not _is_state_dict(data):
        raise InvalidModelFileError(
            f"{path.name} does not hold a state dict (name -> tensor) at the top level or under "
            f"one of {', '.join(CONTAINER_KEYS)}"
        )
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(data: Mapping[Any, Any]) -> bool:
    return bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def infer_num_classes(state: Mapping[str, torch.Tensor]) -> int:
    """The output count of the last 2-D ``weight`` (the classifier's), e.g. ``fc.weight``."""
    for key in reversed(list(state)):
        tensor = state[key]
        if key.endswith("weight") and tensor.dim() == 2:
            return int(tensor.shape[0])
    raise InvalidModelFileError("cannot tell the number of classes; pass it (--num-classes)")


def convert_checkpoint(
    checkpoint: Path,
    folder: Path,
    *,
    architecture: str,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    name: str | None = None,
    title: str | None = None,
    preprocessing: dict[str, Any] | None = None,
    max_parameters: int = 200_000_000,
) -> dict[str, Any]:
    """Write ``folder/model.safetensors`` and ``folder/manifest.json`` from ``checkpoint``.

    Key prefixes from wrappers (``module.``, ``_orig_mod.``, ``model.``) are stripped when
    that makes the keys fit ``architecture``. Returns the manifest written (with ``notes``).
    """
    state = read_state_dict(checkpoint)
    if num_classes is None:
        num_classes = len(class_names) if class_names else infer_num_classes(state)
    if class_names is not None and len(class_names) != num_classes:
        raise InvalidModelFileError(
            f"{len(class_names)} class names for {num_classes} classes; give one name per class"
        )
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.safetensors"
    _save(state, weights)

    def build() -> torch.nn.Module:
        return sources.build_architecture(architecture, num_classes)

    what = f"{architecture} with {num_classes} classes"
    try:
        match, _ = weights_file.check(weights, build, max_parameters=max_parameters, what=what)
        if match.prefix:  # write the keys as the architecture names them
            stripped = {k[len(match.prefix) :]: v for k, v in state.items()}
            _save(stripped, weights)
        weights_file.load_checked(weights, build, max_parameters=max_parameters, what=what)
    except BaseException:
        weights.unlink(missing_ok=True)
        raise
    manifest: dict[str, Any] = {
        "name": name or folder.name,
        "title": title or name or folder.name,
        "architecture": architecture,
        "num_classes": num_classes,
        "weights": weights.name,
    }
    if class_names is not None:
        manifest["class_names"] = class_names
    if preprocessing:
        manifest["preprocessing"] = preprocessing
    (folder / sources.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("wrote %s and %s", weights, folder / sources.MANIFEST)
    return manifest | ({"notes": match.notes} if match.notes else {})


def _save(state: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory: each gets its own contiguous copy.
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
