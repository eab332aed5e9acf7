"""Bringing one's own model: `convscope convert`, torchvision files checked when listed and
labelled `verified`, timm manifests with the architecture's own preprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from torchvision.models import get_model, get_model_weights

from convscope.cli import main
from convscope.config import Settings
from convscope.errors import InvalidModelFileError, ModelUnavailableError
from convscope.services.facade import Convscope
from convscope.services.models import sources
from convscope.services.models.registry import ModelRegistry
from tests.conftest import DEFAULT


def _entry(registry: ModelRegistry, name: str) -> dict:
    return next(m for m in registry.describe() if m["name"] == name)


def _fake_torchvision_file(folder: Path, name: str) -> Path:
    torch.manual_seed(3)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(get_model_weights(name).DEFAULT.url).name
    torch.save(get_model(name, weights=None).state_dict(), path)
    return path


def test_a_wrong_torchvision_file_is_unavailable_when_listed_with_the_way_out(
    tmp_path: Path,
) -> None:
    path = _fake_torchvision_file(tmp_path / "weights", "resnet18")
    registry = ModelRegistry(Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "weights"))
    entry = _entry(registry, "resnet18")  # listed: nothing loaded yet
    assert not entry["loaded"] and entry["available"] is False and entry["verified"] is False
    assert str(path) in entry["error"] and "sha256" in entry["error"]
    for where in ("POST /api/models", "CONVSCOPE_MODELS_DIR", "CONVSCOPE_VERIFY_WEIGHTS_HASH"):
        assert where in entry["hint"], where
    with pytest.raises(ModelUnavailableError, match="POST /api/models"):
        registry.get("resnet18")


def test_unchecked_and_random_weights_are_labelled_unverified(tmp_path: Path) -> None:
    _fake_torchvision_file(tmp_path / "weights", "resnet18")
    registry = ModelRegistry(
        Settings(
            data_dir=tmp_path / "data",
            weights_dir=tmp_path / "weights",
            verify_weights_hash=False,
            untrained_models=True,
        )
    )
    served = _entry(registry, "resnet18")
    assert served["available"] is True and served["verified"] is False
    assert _entry(registry, "resnet18-untrained")["verified"] is False
    assert _entry(registry, DEFAULT)["verified"] is True
    assert _entry(registry, "alexnet")["verified"] is None  # no file: nothing to say


def test_a_matching_file_is_verified_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A file whose sha256 starts with the digits in its name (renamed to make it so)."""
    from convscope.services.storage.files import sha256_file

    torch.manual_seed(0)
    folder = tmp_path / "weights"
    folder.mkdir()
    scratch = folder / "scratch.pth"
    torch.save(get_model("resnet18", weights=None).state_dict(), scratch)
    digest = sha256_file(scratch)[:8]
    target = folder / f"resnet18-{digest}.pth"
    scratch.rename(target)
    calls = []
    real = sources.sha256_file
    monkeypatch.setattr(sources, "sha256_file", lambda p: calls.append(p) or real(p))
    hashes: sources.HashCache = {}
    assert sources.hash_matches(target, hashes) and sources.hash_matches(target, hashes)
    assert len(calls) == 1  # cached by (path, size, mtime)


@pytest.mark.parametrize("arch", ["resnet18", "tf_efficientnet_lite0", "convnext_atto"])
def test_timm_manifests_default_to_the_architecture_preprocessing(
    tmp_path: Path, arch: str
) -> None:
    folder = tmp_path / "models" / "mine"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")  # listing reads the manifest only
    manifest = {"architecture": f"timm/{arch}", "num_classes": 2}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    spec = sources.user_spec(folder)
    # The reference: timm's own resolution from a model instance (random weights, offline).
    config = timm.data.resolve_model_data_config(timm.create_model(arch, pretrained=False))
    pre = spec.preprocessing
    assert pre.crop_size == config["input_size"][-1]
    assert pre.resize_size == int(config["input_size"][-1] / config["crop_pct"])
    assert pre.mean == pytest.approx(config["mean"]) and pre.std == pytest.approx(config["std"])
    assert pre.interpolation == config["interpolation"]
    # What the manifest says wins, field by field.
    manifest["preprocessing"] = {"crop_size": 96}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    spec = sources.user_spec(folder)
    assert spec.preprocessing.crop_size == 96
    assert spec.preprocessing.mean == pytest.approx(config["mean"])


def _checkpoint(path: Path, wrap: str = "", container: str | None = None) -> dict:
    torch.manual_seed(11)
    state = get_model("resnet18", weights=None, num_classes=3).state_dict()
    data: dict = {f"{wrap}{k}": v for k, v in state.items()}
    if container:
        data = {container: data, "epoch": 7}
    torch.save(data, path)
    return state


@pytest.mark.parametrize(
    ("wrap", "container"), [("", None), ("module.", "state_dict"), ("_orig_mod.", "model")]
)
def test_convert_writes_a_folder_the_server_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, wrap, container
) -> None:  # type: ignore[no-untyped-def]
    state = _checkpoint(tmp_path / "insects.pth", wrap, container)
    models = tmp_path / "models"
    monkeypatch.setenv("CONVSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONVSCOPE_MODELS_DIR", str(models))
    argv = ["convert", str(tmp_path / "insects.pth"), "--architecture", "torchvision/resnet18"]
    assert main([*argv, "--class-names", "ant,bee,wasp", "--crop-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "3 classes" in out
    assert ("stripped the key prefix" in out) == bool(wrap)
    manifest = json.loads((models / "insects" / "manifest.json").read_text())
    assert manifest["class_names"] == ["ant", "bee", "wasp"] and manifest["num_classes"] == 3
    registry = ModelRegistry(Settings(data_dir=tmp_path / "data", models_dir=models))
    loaded = registry.get("insects")
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert _entry(registry, "insects")["verified"] is None
    assert loaded.spec.preprocessing.crop_size == 64


def test_convert_refuses_a_pickled_model_and_explains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(get_model("resnet18", weights=None, num_classes=3), tmp_path / "whole.pth")
    with pytest.raises(InvalidModelFileError, match=r"torch.save\(model.state_dict\(\)"):
        Convscope.convert_checkpoint(
            tmp_path / "whole.pth", tmp_path / "out", architecture="torchvision/resnet18"
        )
    argv = ["convert", str(tmp_path / "whole.pth"), "--architecture", "torchvision/resnet18"]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 2
    assert "state_dict()" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_convert_with_the_wrong_architecture_names_the_keys(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "r18.pth")
    with pytest.raises(InvalidModelFileError, match="missing keys"):
        Convscope.convert_checkpoint(
            tmp_path / "r18.pth", tmp_path / "out", architecture="torchvision/alexnet"
        )
    assert not (tmp_path / "out" / "model.safetensors").exists()
