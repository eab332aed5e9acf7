"""Model upload over HTTP: off by default, token-protected, strict, atomic; broken models are
isolated; a pickle is never executed, whichever way it arrives."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from convscope.config import Settings
from convscope.errors import ModelUnavailableError
from convscope.services.facade import Convscope
from tests.server import payloads
from tests.server.conftest import AUTH, assert_error, assert_serving, wait_ready


def _post(
    client: TestClient,
    weights: bytes,
    manifest: object,
    *,
    headers=AUTH,  # type: ignore[no-untyped-def]
    filename: str = "model.safetensors",
):
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return client.post(
        "/api/models",
        files={"weights": (filename, weights, "application/octet-stream")},
        data={"manifest": text},
        headers=headers,
    )


@pytest.fixture(scope="module")
def good_weights() -> bytes:
    return payloads.safetensors_bytes(payloads.weights_state())


@pytest.fixture(scope="module")
def uploaded(hard_client: TestClient, good_weights: bytes) -> str:
    response = _post(hard_client, good_weights, payloads.manifest(name="../../etc/My Net!"))
    assert response.status_code == 201, response.text
    return response.json()["name"]


def test_upload_is_off_by_default(hard_service: Convscope, tmp_path: Path) -> None:
    from convscope.api.app import create_app

    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "models")
    assert settings.model_upload_token is None
    with TestClient(create_app(settings, hard_service)) as client:
        wait_ready(client)
        response = _post(client, b"x" * 100, payloads.manifest())
        assert_error(
            response, 403, "model_upload_disabled", contains="CONVSCOPE_MODEL_UPLOAD_TOKEN"
        )
        deleted = client.delete("/api/models/efficientnet_lite0", headers=AUTH)
        assert_error(deleted, 403, "model_upload_disabled")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic " + "a" * 20},
        {"Authorization": AUTH["Authorization"] + "x"},
        {"Authorization": "Bearer"},
    ],
)
def test_token_is_required(hard_client: TestClient, headers: dict[str, str]) -> None:
    response = _post(hard_client, b"x" * 100, payloads.manifest(), headers=headers)
    assert_error(response, 401, "unauthorized", contains="Bearer")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_error(hard_client.delete("/api/models/x-0000aaaa", headers=headers), 401, "unauthorized")


def test_token_is_checked_before_the_body_is_read(hard_client: TestClient) -> None:
    def endless():  # type: ignore[no-untyped-def]
        yield b"--b\r\nContent-Disposition: form-data; "
        yield b'name="weights"; filename="m.safetensors"\r\n\r\n'
        for _ in range(10_000):  # 80 MB if anybody read it
            yield b"\0" * 8192

    response = hard_client.post(
        "/api/models",
        content=endless(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 401, "unauthorized")


def test_upload_serves_a_server_named_model(
    hard_client: TestClient, hard_settings: Settings, uploaded: str
) -> None:
    # The user's name is sanitised; the folder id is the server's.
    assert uploaded.startswith("etc-my-net-") and len(uploaded) == len("etc-my-net-") + 8
    folder = hard_settings.models_dir / uploaded  # type: ignore[operator]
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.safetensors"]
    assert not any(
        p.name.startswith(".")
        for p in hard_settings.models_dir.iterdir()  # type: ignore[union-attr]
        if p.is_file()
    )
    entry = hard_client.get(f"/api/models/{uploaded}").json()
    assert entry["source"] == "user" and entry["available"] and entry["num_classes"] == 3
    assert entry["title"] == "../../etc/My Net!"  # shown as text, never used as a path
    layers = hard_client.get(f"/api/models/{uploaded}/layers").json()
    assert any(layer["has_filters"] for layer in layers)
    cat = next(i["id"] for i in hard_client.get("/api/images").json() if i["name"] == "cat")
    top = hard_client.get(f"/api/models/{uploaded}/images/{cat}/predictions").json()
    assert {t["label"] for t in top} == {"cat", "dog", "cup"}
    assert math.isclose(sum(t["probability"] for t in top), 1.0, rel_tol=1e-4)
    # Weights identical to what was sent: filters of the first conv.
    filters = hard_client.get(
        f"/api/models/{uploaded}/layers/features.0/filters", params={"format": "npy"}
    )
    assert filters.status_code == 200
    import io

    import numpy as np

    sent = payloads.weights_state()["features.0.weight"].numpy()
    assert np.array_equal(np.load(io.BytesIO(filters.content)), sent)


def test_wrong_keys_are_reported(hard_client: TestClient) -> None:
    state = payloads.weights_state()
    state.pop("features.0.weight")
    state["extra.weight"] = torch.zeros(3)
    response = _post(hard_client, payloads.safetensors_bytes(state), payloads.manifest())
    body = assert_error(response, 422, "invalid_model", contains="missing keys")
    assert body["missing"] == ["features.0.weight"]
    assert body["unexpected"] == ["extra.weight"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda s: s.update({"classifier.1.weight": torch.zeros(5, 512, 1, 1)}), "shape"),
        (lambda s: s.update({"features.0.bias": s["features.0.bias"].to(torch.int32)}), "float"),
        (lambda s: s["features.0.weight"].view(-1).__setitem__(0, float("nan")), "NaN"),
        (lambda s: s["features.0.bias"].__setitem__(1, float("inf")), "NaN or Inf"),
    ],
    ids=["shape", "dtype", "nan", "inf"],
)
def test_bad_tensors_are_refused(hard_client: TestClient, change, says: str) -> None:  # type: ignore[no-untyped-def]
    state = payloads.weights_state()
    change(state)
    response = _post(hard_client, payloads.safetensors_bytes(state), payloads.manifest())
    assert_error(response, 422, "invalid_model", contains=says)


@pytest.mark.parametrize(
    ("manifest", "field", "says"),
    [
        ("{not json", "manifest", "JSON"),
        ("[1, 2]", "manifest", "object"),
        (payloads.manifest(architecture="torchvision/vit_b_16"), "architecture", "not allowed"),
        (payloads.manifest(architecture="../../x"), "architecture", "torchvision/<name>"),
        (payloads.manifest(architecture="pickle/evil"), "architecture", "torchvision/<name>"),
        (payloads.manifest(num_classes=10**12), "num_classes", "CONVSCOPE_MAX_NUM_CLASSES"),
        (payloads.manifest(num_classes=0), "num_classes", "expected"),
        (payloads.manifest(num_classes="3"), "num_classes", "expected"),
        (payloads.manifest(class_names=["a"]), "class_names", "3 strings"),
        (payloads.manifest(preprocessing={"crop_size": 10**6}), "preprocessing", "crop_size"),
        (payloads.manifest(preprocessing={"std": [0, 1, 1]}), "preprocessing", "std"),
        (payloads.manifest(preprocessing={"interpolation": "lanczos9"}), "preprocessing", "interp"),
    ],
)
def test_bad_manifests_are_refused(  # type: ignore[no-untyped-def]
    hard_client: TestClient, good_weights: bytes, manifest, field: str, says: str
) -> None:
    response = _post(hard_client, good_weights, manifest)
    body = assert_error(response, 422, "invalid_parameter", contains=says)
    assert field in body["parameter"]


def test_only_safetensors_files(hard_client: TestClient, good_weights: bytes) -> None:
    for name in ("model.pt", "model.pth", "model.bin", "model.safetensors.pkl"):
        response = _post(hard_client, good_weights, payloads.manifest(), filename=name)
        assert_error(response, 422, "invalid_model", contains=".safetensors")
    missing = hard_client.post("/api/models", data={"manifest": "{}"}, headers=AUTH)
    assert_error(missing, 422, "invalid_parameter", contains="weights")


@pytest.mark.parametrize("cut", [0, 4, 9, 200, -1000])
def test_truncated_weights_are_refused(hard_client: TestClient, good_weights: bytes, cut) -> None:  # type: ignore[no-untyped-def]
    response = _post(hard_client, good_weights[:cut], payloads.manifest())
    assert_error(response, 422, "invalid_model")


def test_a_pickle_posing_as_weights_is_never_executed(
    hard_client: TestClient, hard_settings: Settings, tmp_path: Path
) -> None:
    sentinel = tmp_path / "executed.txt"
    # The payload works: unpickling it really writes the sentinel (then we remove it).
    torch.load(
        __import__("io").BytesIO(payloads.evil_torch_checkpoint(sentinel)), weights_only=False
    )
    assert sentinel.exists()
    sentinel.unlink()
    before = sorted(p.name for p in hard_settings.models_dir.iterdir())  # type: ignore[union-attr]
    for data in (payloads.evil_torch_checkpoint(sentinel), payloads.evil_raw_pickle(sentinel)):
        for filename in ("model.safetensors", "model.pt"):
            response = _post(hard_client, data, payloads.manifest(), filename=filename)
            assert_error(response, 422, "invalid_model")
    assert not sentinel.exists()
    assert sorted(p.name for p in hard_settings.models_dir.iterdir()) == before  # type: ignore[union-attr]
    staging = hard_settings.models_dir / ".staging"  # type: ignore[operator]
    assert not staging.exists() or not any(staging.iterdir())
    assert_serving(hard_client)


def test_a_pickle_in_the_models_folder_is_never_executed(tmp_path: Path) -> None:
    """An operator-provided folder whose 'safetensors' file is a pickle: failed, not run."""
    from convscope.services.models.registry import ModelRegistry

    sentinel = tmp_path / "executed.txt"
    models = tmp_path / "models"
    for name, weights in (("evil", "model.safetensors"), ("evil_pt", "model.pt")):
        (models / name).mkdir(parents=True)
        (models / name / weights).write_bytes(payloads.evil_torch_checkpoint(sentinel))
        (models / name / "manifest.json").write_text(
            json.dumps(payloads.manifest(name=name, weights=weights))
        )
    registry = ModelRegistry(Settings(data_dir=tmp_path, weights_dir=tmp_path, models_dir=models))
    for name in ("evil", "evil_pt"):
        with pytest.raises(ModelUnavailableError, match=r"never accepted|never loaded"):
            registry.get(name)
        assert next(m for m in registry.describe() if m["name"] == name)["available"] is False
    assert not sentinel.exists()
    assert registry.load_failures == 2


def test_corrupt_or_missing_weights_fail_one_model_only(
    hard_client: TestClient, hard_service: Convscope, hard_settings: Settings, good_weights: bytes
) -> None:
    ids = [
        _post(hard_client, good_weights, payloads.manifest(name=n)).json()["name"]
        for n in ("corrupt", "missing")
    ]
    folder = hard_settings.models_dir
    (folder / ids[0] / "model.safetensors").write_bytes(good_weights[:5000])  # type: ignore[operator]
    (folder / ids[1] / "model.safetensors").unlink()  # type: ignore[operator]
    hard_service.refresh_models()
    for name in ids:
        response = hard_client.get(f"/api/models/{name}/layers")
        assert_error(response, 503, "model_unavailable")
        entry = next(m for m in hard_client.get("/api/models").json() if m["name"] == name)
        assert entry["available"] is False and entry["error"]
    assert_serving(hard_client)
    metrics = hard_client.get("/metrics").text
    assert "convscope_model_load_failures_total" in metrics


def test_delete_is_atomic_and_only_for_uploads(
    hard_client: TestClient, hard_settings: Settings, good_weights: bytes
) -> None:
    name = _post(hard_client, good_weights, payloads.manifest(name="doomed")).json()["name"]
    assert hard_client.get(f"/api/models/{name}").status_code == 200
    response = hard_client.delete(f"/api/models/{name}", headers=AUTH)
    assert response.status_code == 204 and response.content == b""
    assert not (hard_settings.models_dir / name).exists()  # type: ignore[operator]
    trash = hard_settings.models_dir / ".trash"  # type: ignore[operator]
    assert not any(trash.iterdir())
    assert_error(hard_client.get(f"/api/models/{name}"), 404, "unknown_model")
    assert_error(hard_client.delete(f"/api/models/{name}", headers=AUTH), 404, "unknown_model")
    assert_error(
        hard_client.delete("/api/models/efficientnet_lite0", headers=AUTH),
        409,
        "model_not_deletable",
        contains="embedded",
    )
    # ".." and its encoded form resolve to /api/models itself, which takes no DELETE.
    for bad, status, code in (
        ("..", 405, "method_not_allowed"),
        ("...", 404, "unknown_model"),
        ("%2e%2e%2f%2e%2e", 405, "method_not_allowed"),
        ("x" * 300, 422, "invalid_parameter"),
    ):
        assert_error(hard_client.delete(f"/api/models/{bad}", headers=AUTH), status, code)
    assert_serving(hard_client)


def test_operator_models_are_not_deletable(
    hard_client: TestClient, hard_service: Convscope, hard_settings: Settings
) -> None:
    folder = hard_settings.models_dir / "operator_net"  # type: ignore[operator]
    folder.mkdir()
    save_file(payloads.weights_state(), str(folder / "model.safetensors"))
    (folder / "manifest.json").write_text(json.dumps(payloads.manifest(name="operator_net")))
    hard_service.refresh_models()
    assert hard_client.get("/api/models/operator_net").status_code == 200
    assert_error(
        hard_client.delete("/api/models/operator_net", headers=AUTH), 409, "model_not_deletable"
    )
    assert folder.exists()


@pytest.mark.parametrize(
    ("error", "status", "code", "contains"),
    [
        (errno.ENOSPC, 507, "storage_full", "no space left"),
        (errno.EROFS, 503, "storage_unavailable", "read-only"),
    ],
)
def test_a_full_or_read_only_store_is_a_507_or_503_and_leaves_nothing_behind(
    hard_client: TestClient,
    hard_settings: Settings,
    good_weights: bytes,
    monkeypatch: pytest.MonkeyPatch,
    error: int,
    status: int,
    code: str,
    contains: str,
) -> None:
    """The disk refuses the write: full is 507 storage_full, read-only 503; no partial model."""
    import os

    models_dir: Path = hard_settings.models_dir  # type: ignore[assignment]
    models_dir.mkdir(parents=True, exist_ok=True)
    before = sorted(p.name for p in models_dir.iterdir() if p.name != ".staging")
    real_rename = os.rename

    def refused(src: object, dst: object) -> None:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "rename", refused)  # the commit step of an upload
    response = _post(hard_client, good_weights, payloads.manifest(name="too big for the disk"))
    monkeypatch.setattr(os, "rename", real_rename)
    assert_error(response, status, code, contains=contains)
    staging = models_dir / ".staging"
    assert not staging.exists() or not any(staging.iterdir())
    assert sorted(p.name for p in models_dir.iterdir() if p.name != ".staging") == before
    assert_serving(hard_client)
