"""Expanded weights, filter analysis and model comparison over HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from convscope.config import Settings
from convscope.services.facade import Convscope
from tests.conftest import DEFAULT
from tests.services.weights.checkpoints import (
    OTHER_HEAD,
    PERTURBED,
    PERTURBED_LAYER,
    RESNET,
    write_checkpoints,
)

M = f"/api/models/{DEFAULT}"


def _png(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_expanded_npy_json_and_png_agree(client: TestClient) -> None:
    url = f"{M}/layers/blocks.2/expanded?channel=5"
    npy = client.get(url + "&format=npy")
    assert npy.status_code == 200 and npy.headers["content-type"] == "application/x-npy"
    values = np.load(io.BytesIO(npy.content))
    assert values.dtype == np.float32 and values.shape[0] == 3
    body = client.get(url + "&format=json").json()
    np.testing.assert_array_equal(np.asarray(body["values"], np.float32), values)
    top, left, bottom, right = body["box"]
    assert [bottom - top, right - left] == list(values.shape[1:]) == body["shape"][1:]
    assert body["onto_shape"] == [3, 224, 224] and body["position"] == [14, 14]
    np.testing.assert_allclose(
        body["norms"], np.linalg.norm(values.reshape(3, -1), axis=1), rtol=1e-5
    )
    assert npy.headers["x-convscope-box"] == ",".join(map(str, body["box"]))
    pixels = _png(client.get(url + "&scale=2"))
    assert pixels.shape == (values.shape[1] * 2, values.shape[2] * 2, 3)
    # Zero weight is mid-grey; the largest magnitude reaches an end of the range.
    peak = np.unravel_index(np.abs(values).argmax(), values.shape)
    drawn = int(pixels[peak[1] * 2, peak[2] * 2, peak[0]])
    assert drawn in (0, 255)


def test_expanded_onto_a_layer_draws_its_strongest_channels(client: TestClient) -> None:
    url = f"{M}/layers/blocks.3.0.conv_pw/expanded?channel=2&onto=blocks.2"
    values = np.load(io.BytesIO(client.get(url + "&format=npy").content))
    assert values.shape == (40, 1, 1)  # a 1x1 conv straight onto the previous block
    response = client.get(url + "&top=4&scale=8")
    pixels = _png(response)
    order = [int(c) for c in response.headers["x-convscope-channels"].split(",")]
    norms = np.abs(values[:, 0, 0])
    assert order == list(np.argsort(-norms, kind="stable")[:4])
    grid = dict(part.split("=") for part in response.headers["x-convscope-grid"].split(";"))
    rows, cols = int(grid["nrow"]), int(grid["ncol"])
    assert rows * cols >= 4 and grid["tile"] == "8x8"
    assert pixels.shape[:2] == (rows * (8 + 2) + 2, cols * (8 + 2) + 2)  # padding 2
    first = pixels[2, 2]
    sign = np.sign(values[order[0], 0, 0])
    # Blue for negative, red for positive; the strongest channel is fully saturated.
    assert tuple(first) == ((178, 24, 43) if sign > 0 else (33, 102, 172))


def test_expanded_errors(client: TestClient) -> None:
    r = client.get(f"{M}/layers/nope/expanded?channel=0")
    assert r.status_code == 404 and r.json()["code"] == "unknown_layer"
    r = client.get(f"{M}/layers/blocks.1/expanded?channel=99999")
    assert r.status_code == 422 and r.json()["code"] == "invalid_parameter"
    r = client.get(f"{M}/layers/blocks.1/expanded?channel=0&onto=blocks.4")
    assert r.status_code == 422 and r.json()["code"] == "invalid_parameter"
    assert "does not run before" in r.json()["detail"]
    r = client.get(f"{M}/layers/blocks.1/expanded?channel=0&onto=nope")
    assert r.status_code == 404 and r.json()["code"] == "unknown_layer"
    r = client.get(f"{M}/layers/blocks.1/expanded")
    assert r.status_code == 422 and r.json()["code"] == "invalid_parameter"


def test_analysis_of_the_stem(client: TestClient) -> None:
    body = client.get(f"{M}/layers/conv_stem/analysis").json()
    assert len(body["filters"]) == 32
    grouped = [i for members in body["groups"].values() for i in members]
    assert sorted(grouped) == list(range(32))
    for f in body["filters"]:
        assert f["colour"] in ("grey", "colour-opponent", "single colour")
        assert 0 <= f["frequency"] <= 0.71  # at most the Nyquist corner
        assert f["orientation"] is None or 0 <= f["orientation"] < 180
    response = client.get(f"{M}/layers/conv_stem/analysis?format=png&scale=4")
    pixels = _png(response)
    assert response.headers["x-convscope-channels"].split(",") == [str(i) for i in grouped]
    assert pixels.shape[1] >= 3 * 4


def test_analysis_refuses_layers_that_do_not_read_the_image(client: TestClient) -> None:
    r = client.get(f"{M}/layers/blocks.0.0.conv_dw/analysis")
    assert r.status_code == 422 and r.json()["code"] == "not_on_image"
    r = client.get(f"{M}/layers/bn1/analysis")
    assert r.status_code == 422 and r.json()["code"] == "not_a_conv_layer"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, model) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from convscope.api.app import create_app

    root = tmp_path_factory.mktemp("compare-api")
    write_checkpoints(root / "models", model.module)
    (root / "empty").mkdir()
    settings = Settings(
        data_dir=root / "data", models_dir=root / "models", weights_dir=root / "empty"
    )
    service = Convscope(settings)
    service.load_default()
    with TestClient(create_app(settings, service)) as c:
        yield c


def test_compare_over_http(two: TestClient) -> None:
    cat = next(i["id"] for i in two.get("/api/images").json() if i["name"] == "cat")
    r = two.get(f"/api/models/{DEFAULT}/compare/{PERTURBED}?image={cat}")
    assert r.status_code == 200, r.text
    body = orjson.loads(r.content)
    assert body["first_weight_change"] == body["first_activation_change"] == PERTURBED_LAYER
    assert body["a"] == DEFAULT and body["b"] == PERTURBED and body["image"] == cat


@pytest.mark.parametrize(("other", "layer"), [(OTHER_HEAD, "classifier"), (RESNET, "conv_stem")])
def test_compare_different_architectures_is_422(two: TestClient, other: str, layer: str) -> None:
    r = two.get(f"/api/models/{DEFAULT}/compare/{other}")
    assert r.status_code == 422
    assert r.json()["code"] == "architecture_mismatch" and r.json()["layer"] == layer


def test_compare_unknown_image_and_model(two: TestClient) -> None:
    r = two.get(f"/api/models/{DEFAULT}/compare/{PERTURBED}?image=" + "0" * 64)
    assert r.status_code == 404 and r.json()["code"] == "unknown_image"
    r = two.get(f"/api/models/{DEFAULT}/compare/nope")
    assert r.status_code == 404 and r.json()["code"] == "unknown_model"
