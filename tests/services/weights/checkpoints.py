"""Second checkpoints for compare tests: user models written next to the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from torch import nn

PERTURBED = "lite0-perturbed"
PERTURBED_LAYER = "blocks.3.1.conv_dw"
OTHER_HEAD = "lite0-ten-classes"
RESNET = "resnet18-three"

LITE0_PREPROCESSING = {
    "crop_size": 224,
    "resize_size": 256,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bicubic",
}


def _save(folder: Path, net: nn.Module, architecture: str, num_classes: int) -> None:
    folder.mkdir(parents=True)
    save_file(
        {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    manifest = {
        "name": folder.name,
        "architecture": architecture,
        "num_classes": num_classes,
        "preprocessing": LITE0_PREPROCESSING,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def write_checkpoints(models: Path, default: nn.Module) -> None:
    """Three user models in ``models``: the default with one layer perturbed, the default's
    architecture with a 10-class head, and a ResNet-18."""
    torch.manual_seed(11)
    perturbed = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    perturbed.load_state_dict(default.state_dict())
    weight = perturbed.get_submodule(PERTURBED_LAYER).weight
    with torch.no_grad():
        weight.add_(0.05 * weight.std() * torch.randn_like(weight))
    _save(models / PERTURBED, perturbed, "timm/tf_efficientnet_lite0", 1000)
    ten = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    _save(models / OTHER_HEAD, ten, "timm/tf_efficientnet_lite0", 10)
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=3)
    _save(models / RESNET, resnet, "timm/resnet18", 3)
