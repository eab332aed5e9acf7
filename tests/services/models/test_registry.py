"""The registry: the embedded model, torchvision weights from a cache, user models."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import get_model

from convscope.config import Settings
from convscope.errors import InvalidModelFileError, ModelUnavailableError, UnknownModelError
from convscope.services.facade import Convscope
from convscope.services.models import sources
from convscope.services.models.registry import ModelRegistry
from tests.conftest import DEFAULT, hooks_left


def test_embedded_model_sees_a_cat_and_an_espresso(service: Convscope, samples) -> None:
    cat = service.predictions(DEFAULT, samples["cat"], 1)[0]
    assert cat["label"] in {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
    assert cat["probability"] > 0.3
    coffee = service.predictions(DEFAULT, samples["coffee"], 1)[0]
    assert coffee["label"] in {"espresso", "cup", "coffee mug"}


def test_lite0_remap_checks_order_and_shapes() -> None:
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    good = {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}
    assert list(sources.remap_lite0(good, target)) == ["a.weight", "a.bias"]
    with pytest.raises(InvalidModelFileError, match="remap failed"):
        sources.remap_lite0({"x.bias": torch.ones(2), "x.weight": torch.ones(2, 3)}, target)
    with pytest.raises(InvalidModelFileError, match="remap failed"):
        sources.remap_lite0({"x.weight": torch.ones(3, 2), "x.bias": torch.ones(2)}, target)


def test_unknown_model_names_the_listing(service: Convscope) -> None:
    with pytest.raises(UnknownModelError, match="GET /api/models"):
        service.model("resnet9000")


def test_torchvision_model_without_weights_is_unavailable_with_a_hint(service: Convscope) -> None:
    entry = next(m for m in service.models() if m["name"] == "alexnet")
    assert entry["available"] is False
    assert "alexnet-owt-7be5be79.pth" in entry["error"]
    assert "CONVSCOPE_WEIGHTS_DIR" in entry["hint"] and "ALLOW_DOWNLOAD" in entry["hint"]
    with pytest.raises(ModelUnavailableError, match="not found"):
        service.model("alexnet")
    for name in sources.TORCHVISION_MODELS:
        assert any(m["name"] == name for m in service.models())


def _write_torchvision_weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    from torchvision.models import get_model_weights

    torch.manual_seed(3)
    state = get_model(name, weights=None).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    filename = Path(get_model_weights(name).DEFAULT.url).name
    torch.save(state, folder / filename)
    return state


def test_torchvision_weights_load_from_the_torch_home_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = _write_torchvision_weights(tmp_path / "torch" / "hub" / "checkpoints", "resnet18")
    # The test's file is not torchvision's, so its sha256 cannot match the name's prefix.
    settings = Settings(data_dir=tmp_path / "data", verify_weights_hash=False)
    registry = ModelRegistry(settings)
    entry = next(m for m in registry.describe() if m["name"] == "resnet18")
    assert entry["available"] is True and entry["error"] is None
    loaded = registry.get("resnet18")
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert loaded.layer("layer1.0.conv1").output_shape == [64, 56, 56]
    assert hooks_left(loaded.module) == 0 and not loaded.module.training


def test_torchvision_weights_from_the_weights_folder_are_hash_checked(tmp_path: Path) -> None:
    _write_torchvision_weights(tmp_path / "weights", "resnet18")
    settings = Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "weights")
    registry = ModelRegistry(settings)
    # Checked when listed, before any load (tests/services/models/test_own_models.py).
    entry = next(m for m in registry.describe() if m["name"] == "resnet18")
    assert entry["available"] is False and "sha256" in entry["error"]
    with pytest.raises(ModelUnavailableError, match="not the published"):
        registry.get("resnet18")
    assert registry.get(DEFAULT) is not None  # the others keep serving


def test_untrained_mode_is_explicit_and_labelled(tmp_path: Path) -> None:
    plain = ModelRegistry(Settings(data_dir=tmp_path))
    assert "alexnet-untrained" not in plain.specs
    registry = ModelRegistry(Settings(data_dir=tmp_path, untrained_models=True))
    entry = next(m for m in registry.describe() if m["name"] == "alexnet-untrained")
    assert entry["source"] == "untrained" and "UNTRAINED" in entry["title"]
    assert entry["available"] is True
    model = registry.get("alexnet-untrained")
    assert model.layer("features.0").has_filters


def _user_model(folder: Path, **manifest_overrides: object) -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True)
    torch.manual_seed(5)
    net = get_model("resnet18", weights=None, num_classes=3)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    manifest = {
        "name": folder.name,
        "title": "Three classes",
        "architecture": "torchvision/resnet18",
        "num_classes": 3,
        "class_names": ["ant", "bee", "wasp"],
        "preprocessing": {"crop_size": 96, "resize_size": 110},
    } | manifest_overrides
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return state


def test_user_model_from_manifest_and_safetensors(tmp_path: Path) -> None:
    state = _user_model(tmp_path / "models" / "insects")
    registry = ModelRegistry(Settings(data_dir=tmp_path / "d", models_dir=tmp_path / "models"))
    entry = next(m for m in registry.describe() if m["name"] == "insects")
    assert entry["source"] == "user" and entry["num_classes"] == 3
    assert entry["input_size"] == [96, 96]
    loaded = registry.get("insects")
    assert loaded.spec.categories == ["ant", "bee", "wasp"]
    assert torch.equal(loaded.module.state_dict()["fc.weight"], state["fc.weight"])
    assert loaded.layer("conv1").output_shape == [64, 48, 48]


def test_user_model_with_wrong_shapes_is_listed_with_its_error(tmp_path: Path) -> None:
    _user_model(tmp_path / "models" / "bad", num_classes=4, class_names=["a", "b", "c", "d"])
    registry = ModelRegistry(Settings(data_dir=tmp_path / "d", models_dir=tmp_path / "models"))
    with pytest.raises(
        ModelUnavailableError, match=r"fc.weight: expected shape \[4, 512\], got \[3, 512\]"
    ):
        registry.get("bad")
    entry = next(m for m in registry.describe() if m["name"] == "bad")
    assert entry["available"] is False and "weights do not fit" in entry["error"]


def test_broken_manifest_is_listed_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "models" / "broken").mkdir(parents=True)
    (tmp_path / "models" / "broken" / "manifest.json").write_text("{not json")
    registry = ModelRegistry(Settings(data_dir=tmp_path / "d", models_dir=tmp_path / "models"))
    entry = next(m for m in registry.describe() if m["name"] == "broken")
    assert entry["available"] is False and "invalid manifest" in entry["error"]


class _Sentinel:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (Path(_Sentinel.target), "pwned"))

    target = ""


def test_a_pickle_posing_as_weights_is_never_unpickled(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "evil"
    folder.mkdir(parents=True)
    sentinel = tmp_path / "sentinel.txt"
    _Sentinel.target = str(sentinel)
    payload = pickle.dumps(_Sentinel())
    for weights in ("model.safetensors", "model.pth"):
        (folder / weights).write_bytes(payload)
        (folder / "manifest.json").write_text(
            json.dumps(
                {"architecture": "torchvision/resnet18", "num_classes": 1000, "weights": weights}
            )
        )
        registry = ModelRegistry(Settings(data_dir=tmp_path / "d", models_dir=tmp_path / "models"))
        with pytest.raises(ModelUnavailableError):
            registry.get("evil")
        assert not sentinel.exists()
    # the sentinel is live: unpickling really would have written it
    pickle.loads(payload)
    assert sentinel.read_text() == "pwned"
