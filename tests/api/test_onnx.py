"""ONNX models: exported in the test with torch.onnx.export, served from the models folder
and the upload API, with layers, filters, feature maps and Grad-CAM equal to the original's."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import timm
import torch
from fastapi.testclient import TestClient
from torch import nn
from torchvision.models import resnet18

from convscope.config import Settings
from convscope.services.attribution.methods import cam
from convscope.services.facade import Convscope
from convscope.services.models.onnx import layer_name

SIZE = 64


def _export(model: nn.Module, path: Path) -> None:
    """The legacy exporter at opset 17, BatchNorm kept as its own nodes (no folding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # torch 2.9+: the TorchScript exporter is deprecated in favour of dynamo=True, whose
        # opset-18+ graphs onnx2torch does not convert (see docs: the recipe uses this call).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            input_names=["image"],
            output_names=["logits"],
        )


class WithDet(nn.Module):
    """A CNN whose head takes determinants: ONNX ``Det``, which onnx2torch cannot convert."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.linalg.det(self.conv(x)))


@pytest.fixture(scope="module")
def originals() -> dict[str, nn.Module]:
    torch.manual_seed(7)
    tv = resnet18(num_classes=4).eval()
    tm = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    # Non-trivial BatchNorm statistics, so a wrong BN conversion would show.
    for model in (tv, tm):
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return {"tv_onnx": tv, "timm_onnx": tm}


@pytest.fixture(scope="module")
def onnx_client(
    originals: dict[str, nn.Module], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    models = tmp_path_factory.mktemp("models")
    for name, model in originals.items():
        _export(model, models / name / "model.onnx")
        manifest = {"name": name, "architecture": "onnx"}  # classes and size from the graph
        (models / name / "manifest.json").write_text(json.dumps(manifest))
    torch.manual_seed(0)
    _export(WithDet().eval(), models / "withdet" / "model.onnx")
    (models / "withdet" / "manifest.json").write_text(
        json.dumps({"architecture": "onnx", "num_classes": 2})
    )
    empty = tmp_path_factory.mktemp("empty")
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        weights_dir=empty,
        models_dir=models,
        model_upload_token="t0ken-for-tests",
    )
    from convscope.api.app import create_app

    app = create_app(settings, Convscope(settings))
    client = TestClient(app)  # no lifespan: the default model is not needed here
    yield client
    client.close()


def _npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


def _onnx_layer(layers: list[dict], original: str) -> str:
    """The ONNX layer of an original Conv2d. The exporter names its node after the module's
    scopes (``layer1.0.conv1`` -> ``/layer1/layer1.0/conv1/Conv``: numbered children carry
    their parent's scope); convscope's name folds that to ``layer1_layer1_0_conv1_Conv``."""
    parts = original.split(".")
    scopes: list[str] = []
    for part in parts:  # a numbered child's scope extends its parent's: downsample.1
        scopes.append(f"{scopes[-1]}.{part}" if part.isdigit() and scopes else part)
    name = layer_name("/" + "/".join(scopes) + "/Conv")
    assert name in {entry["name"] for entry in layers}, (original, name)
    return name


@pytest.mark.parametrize("name", ["tv_onnx", "timm_onnx"])
def test_onnx_model_serves_what_the_original_computes(
    onnx_client: TestClient, originals, name: str
) -> None:
    original = originals[name]
    entry = onnx_client.get(f"/api/models/{name}")
    assert entry.status_code == 200, entry.text
    info = entry.json()
    assert info["input_size"] == [SIZE, SIZE] and info["source"] == "user"
    assert info["num_classes"] == (4 if name == "tv_onnx" else 3)
    layers = onnx_client.get(f"/api/models/{name}/layers").json()
    convs = [n for n, m in original.named_modules() if isinstance(m, nn.Conv2d)]
    by_name = {entry["name"]: entry for entry in layers}
    cat = "sample:cat"
    x = _npy(onnx_client.get(f"/api/models/{name}/images/{cat}/input?format=npy").content)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        original.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: captured.__setitem__(n, out.detach())
        )
        for n in convs
    ]
    try:
        with torch.no_grad():
            logits = original(torch.from_numpy(x)[None])
    finally:
        for hook in hooks:
            hook.remove()
    top = onnx_client.get(f"/api/models/{name}/images/{cat}/predictions?top=1").json()[0]
    assert top["index"] == int(logits.argmax())
    assert top["probability"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)
    for conv in (convs[0], convs[len(convs) // 2], convs[-1]):
        layer = _onnx_layer(layers, conv)
        assert by_name[layer]["has_filters"] is True
        weights = _npy(
            onnx_client.get(f"/api/models/{name}/layers/{layer}/filters?format=npy").content
        )
        assert np.allclose(weights, original.get_submodule(conv).weight.detach().numpy(), atol=1e-6)
        url = f"/api/models/{name}/images/{cat}/activations/{layer}?format=npy"
        maps = _npy(onnx_client.get(url).content)
        assert np.allclose(maps, captured[conv][0].numpy(), atol=1e-4), conv
    # Grad-CAM through the converted graph equals Grad-CAM on the original at the same layer.
    last = convs[-1]
    body = onnx_client.get(
        f"/api/models/{name}/images/{cat}/cam",
        params={"layer": _onnx_layer(layers, last), "format": "json", "class_index": 1},
    ).json()
    # The input view: undo the standardisation (the manifest's ImageNet defaults).
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    view = torch.from_numpy(x) * std + mean
    reference = cam(
        original,
        view,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        layer=last,
        class_index=1,
    )
    assert np.allclose(np.asarray(body["cam"]), reference.cam.numpy(), atol=1e-4)
    assert body["score"] == pytest.approx(reference.score, abs=1e-4)


def test_layer_names_map_back_to_onnx_nodes(onnx_client: TestClient, tmp_path: Path) -> None:
    layers = {entry["name"] for entry in onnx_client.get("/api/models/tv_onnx/layers").json()}
    torch.manual_seed(7)
    path = tmp_path / "r.onnx"
    _export(resnet18(num_classes=4).eval(), path)
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    assert len(nodes) == 20
    for node in nodes:  # '/layer1/layer1.0/conv1/Conv' -> 'layer1_layer1_0_conv1_Conv'
        assert layer_name(node.name) in layers, node.name
    assert "layer1_layer1_0_conv1_Conv" in layers


def test_an_unsupported_operator_is_a_422_naming_it(onnx_client: TestClient) -> None:
    refused = onnx_client.get("/api/models/withdet/layers")
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["code"] == "unsupported_operator" and "Det" in body["detail"]
    listed = next(m for m in onnx_client.get("/api/models").json() if m["name"] == "withdet")
    assert listed["available"] is False and "Det" in listed["error"]


def test_onnx_models_upload_through_the_api(onnx_client: TestClient, originals, tmp_path) -> None:
    path = tmp_path / "up.onnx"
    _export(originals["tv_onnx"], path)
    auth = {"Authorization": "Bearer t0ken-for-tests"}
    manifest = {"name": "uploaded", "architecture": "onnx", "num_classes": 4}
    created = onnx_client.post(
        "/api/models",
        headers=auth,
        files={"weights": ("up.onnx", path.read_bytes(), "application/octet-stream")},
        data={"manifest": json.dumps(manifest)},
    )
    assert created.status_code == 201, created.text
    name = created.json()["name"]
    layers = onnx_client.get(f"/api/models/{name}/layers")
    assert layers.status_code == 200 and any(e["name"] == "conv1_Conv" for e in layers.json())
    shrink = tmp_path / "shrink.onnx"
    _export(WithDet().eval(), shrink)
    refused = onnx_client.post(
        "/api/models",
        headers=auth,
        files={"weights": ("s.onnx", shrink.read_bytes(), "application/octet-stream")},
        data={"manifest": json.dumps({"name": "s", "architecture": "onnx", "num_classes": 2})},
    )
    assert refused.status_code == 422 and refused.json()["code"] == "unsupported_operator"
    assert "Det" in refused.json()["detail"]
