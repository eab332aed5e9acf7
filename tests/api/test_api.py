"""Every endpoint over HTTP, checked against independent computations."""

import base64
import hashlib
import io
import itertools
import threading
import time
from importlib import resources

import matplotlib
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from convscope.services.facade import Convscope
from tests.conftest import DEFAULT, png_bytes

M = f"/api/models/{DEFAULT}"
# The cat sample's id: the sha256 of its bytes.
SAMPLE = hashlib.sha256(
    (resources.files("convscope") / "data" / "samples" / "chelsea.jpg").read_bytes()
).hexdigest()


def _npy(content: bytes) -> np.ndarray:
    return np.load(io.BytesIO(content), allow_pickle=False)


def _png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"


def test_models_listing(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/api/models").json()}
    lite = models[DEFAULT]
    assert lite["available"] and lite["default"] and lite["source"] == "embedded"
    assert lite["input_size"] == [224, 224] and lite["num_classes"] == 1000
    assert models["vgg16"]["available"] is False and models["vgg16"]["hint"]
    assert client.get(M).json()["name"] == DEFAULT


def test_layers(client: TestClient) -> None:
    layers = client.get(f"{M}/layers").json()
    by_name = {layer["name"]: layer for layer in layers}
    assert [layer["index"] for layer in layers] == list(range(len(layers)))
    assert by_name["conv_stem"]["params"] == {"weight": [32, 3, 3, 3]}
    assert by_name["blocks.1.0.conv_dw"]["depthwise"] is True
    assert by_name["blocks.1.0.conv_dw"]["kernel_size"] == [3, 3]


def test_filters_png_grid_decodes_to_the_tiles_json_describes(client: TestClient) -> None:
    for layer, params in [
        ("conv_stem", {}),
        ("conv_stem", {"normalize": "layer", "scale": 4}),
        ("blocks.2.0.conv_pw", {"input_channel": 3, "channels": "0-15", "colormap": "gray"}),
        ("blocks.2.0.conv_dw", {"scale": 5}),
    ]:
        png = client.get(f"{M}/layers/{layer}/filters", params=params)
        meta = client.get(f"{M}/layers/{layer}/filters", params=params | {"format": "json"})
        assert png.status_code == meta.status_code == 200, png.text
        assert png.headers["content-type"] == "image/png"
        pixels, info = _png(png.content), meta.json()
        values = torch.tensor(info["values"])
        if info["mode"] == "rgb":
            tiles = values
        elif info["mode"].startswith("input_channel"):
            tiles = values[:, params["input_channel"] : params["input_channel"] + 1]
        else:
            tiles = values
        peak = (
            tiles.abs().amax()
            if info["normalize"] == "layer"
            else tiles.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
        ).clamp_min(1e-12)  # an all-zero (dead) filter is drawn mid-grey
        expected = ((tiles / (2 * peak) + 0.5).clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)
        layout = info["layout"]
        s, th, tw = layout["scale"], layout["tile_height"], layout["tile_width"]
        assert len(info["channels"]) == layout["count"] == len(tiles)
        for i in range(layout["count"]):
            row, col = divmod(i, layout["ncol"])
            y = row * (th + layout["padding"]) + layout["padding"]
            x = col * (tw + layout["padding"]) + layout["padding"]
            tile = pixels[y : y + th : s, x : x + tw : s]
            want = expected[i].permute(1, 2, 0).numpy()
            want = want if want.shape[-1] == 3 else want[..., 0]
            assert np.array_equal(tile, want), (layer, i)


def test_filters_npy_and_json_values_are_the_weights(client: TestClient, model) -> None:
    weight = model.module.get_submodule("conv_stem").weight.detach().numpy()
    npy = client.get(f"{M}/layers/conv_stem/filters", params={"format": "npy"})
    assert npy.headers["content-type"] == "application/x-npy"
    assert np.array_equal(_npy(npy.content), weight)
    info = client.get(f"{M}/layers/conv_stem/filters", params={"format": "json"}).json()
    assert info["shape"] == [32, 3, 3, 3]
    assert np.array_equal(np.asarray(info["values"], dtype=np.float32), weight)
    assert info["stats"]["max"] == pytest.approx(float(weight.max()))


def test_upload_list_and_fetch_an_image(client: TestClient) -> None:
    data = png_bytes(80, 60, seed=42)
    created = client.post("/api/images", files={"file": ("mine.png", data, "image/png")})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["width"] == 80 and body["height"] == 60 and body["kind"] == "upload"
    assert created.headers["location"] == f"/api/images/{body['id']}"
    again = client.post("/api/images", files={"file": ("same.png", data, "image/png")})
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    listing = client.get("/api/images").json()
    assert body["id"] in {i["id"] for i in listing}
    assert {"cat", "coffee", "rocket", "astronaut"} <= {i["name"] for i in listing}
    fetched = client.get(f"/api/images/{body['id']}")
    assert fetched.content == data and fetched.headers["content-type"] == "image/png"


def test_input_view_png_and_npy(client: TestClient, samples, model, service: Convscope) -> None:
    npy = client.get(f"{M}/images/{samples['cat']}/input", params={"format": "npy"})
    x = _npy(npy.content)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    png = _png(client.get(f"{M}/images/{samples['cat']}/input").content)
    assert png.shape == (224, 224, 3)
    # the PNG is the un-normalised input: mean 0.5 / std 0.5 undone
    assert np.abs(png.astype(np.float32) / 255 - (x.transpose(1, 2, 0) * 0.5 + 0.5)).max() < 1 / 255


def test_activation_npy_equals_the_model_run_on_the_served_input(
    client: TestClient, samples, model
) -> None:
    x = torch.from_numpy(
        _npy(client.get(f"{M}/images/{samples['coffee']}/input?format=npy").content)
    )
    for layer in ["conv_stem", "bn1", "blocks.1.0.conv_pw", "blocks.3", "conv_head", "global_pool"]:
        seen: list[torch.Tensor] = []
        handle = model.module.get_submodule(layer).register_forward_hook(
            lambda _m, _i, o, seen=seen: seen.append(o.clone())
        )
        try:
            with torch.no_grad():
                model.module(x[None])
        finally:
            handle.remove()
        response = client.get(f"{M}/images/{samples['coffee']}/activations/{layer}?format=npy")
        got = _npy(response.content)
        want = seen[-1][0].numpy()
        assert got.shape == (want.shape if want.ndim == 3 else (want.shape[0], 1, 1)), layer
        assert np.array_equal(got.reshape(want.shape), want), layer


def test_activation_png_json_and_options(client: TestClient, samples) -> None:
    url = f"{M}/images/{samples['cat']}/activations/blocks.2.0.conv_pw"
    npy = _npy(client.get(url, params={"format": "npy"}).content)
    png = client.get(url, params={"order": "mean", "limit": 6, "colormap": "gray", "scale": 2})
    order = [int(c) for c in png.headers["x-convscope-channels"].split(",")]
    means = npy.reshape(npy.shape[0], -1).mean(1)
    assert order == list(np.argsort(-means, kind="stable")[:6])
    grid = dict(kv.split("=") for kv in png.headers["x-convscope-grid"].split(";"))
    pixels = _png(png.content)
    assert pixels.ndim == 2  # gray: a greyscale PNG, 256 levels
    th, tw = (int(v) for v in grid["tile"].split("x"))
    first = pixels[2 : 2 + th : 2, 2 : 2 + tw : 2]
    m = npy[order[0]]
    assert np.array_equal(first, np.floor((m - m.min()) / (m.max() - m.min()) * 255 + 0.5))
    assert (pixels[:2] == 255).all() and (pixels[:, :2] == 255).all()  # padding: background
    js = client.get(url, params={"format": "json", "channels": "1,4-5"}).json()
    assert js["shape"] == list(npy.shape) and [c["index"] for c in js["channels"]] == [1, 4, 5]
    c = js["channels"][1]
    q = np.frombuffer(base64.b64decode(c["data"]), dtype=np.uint8).reshape(npy.shape[1:])
    restored = c["min"] + q / 255 * (c["max"] - c["min"])
    assert np.abs(restored - npy[4]).max() <= (c["max"] - c["min"]) / 255
    assert c["mean"] == pytest.approx(float(npy[4].mean()), rel=1e-5)
    floats = client.get(url, params={"format": "json", "channels": "4", "dtype": "float32"})
    assert np.array_equal(np.asarray(floats.json()["channels"][0]["data"], np.float32), npy[4])
    layer_norm = client.get(url, params={"normalize": "layer", "colormap": "magma"})
    assert layer_norm.status_code == 200 and layer_norm.content != png.content


def test_colour_grid_is_the_colormap_at_255_levels_with_grey_padding(client, samples) -> None:
    url = f"{M}/images/{samples['cat']}/activations/blocks.2.0.conv_pw"
    npy = _npy(client.get(url, params={"format": "npy", "channels": "3"}).content)[0]
    png = client.get(url, params={"channels": "3,5", "colormap": "magma", "background": 40})
    image = Image.open(io.BytesIO(png.content))
    assert image.mode == "P"  # indexed: one byte per pixel, the colormap as the palette
    rgb = np.asarray(image.convert("RGB"))
    grid = dict(kv.split("=") for kv in png.headers["x-convscope-grid"].split(";"))
    th, tw = (int(v) for v in grid["tile"].split("x"))
    step, pad = int(grid["scale"]), int(grid["padding"])
    first = rgb[pad : pad + th : step, pad : pad + tw : step]
    levels = np.floor((npy - npy.min()) / (npy.max() - npy.min()) * 254 + 0.5).astype(int)
    magma = matplotlib.colormaps["magma"](np.linspace(0, 1, 255))[:, :3]
    assert np.array_equal(first, np.rint(magma[levels] * 255))
    assert (rgb[:pad] == 40).all() and (rgb[:, :pad] == 40).all()


def test_channel_stats_and_top_k(client: TestClient, samples) -> None:
    url = f"{M}/images/{samples['rocket']}"
    npy = _npy(client.get(f"{url}/activations/blocks.4?format=npy").content)
    stats = client.get(f"{url}/channels/blocks.4", params={"top": 3}).json()
    assert stats["shape"] == list(npy.shape) and len(stats["channels"]) == npy.shape[0]
    means = npy.reshape(npy.shape[0], -1).mean(1)
    assert [t["index"] for t in stats["top"]] == list(np.argsort(-means, kind="stable")[:3])
    assert stats["channels"][7]["max"] == pytest.approx(float(npy[7].max()))


def test_predictions(client: TestClient, samples) -> None:
    top = client.get(f"{M}/images/{samples['coffee']}/predictions", params={"top": 5}).json()
    assert len(top) == 5 and top[0]["label"] == "espresso"
    assert all(a["probability"] >= b["probability"] for a, b in itertools.pairwise(top))


def test_one_shot_returns_the_same_maps_as_upload_then_get(client: TestClient) -> None:
    data = png_bytes(120, 90, seed=7)
    once = client.post(
        f"{M}/activations",
        files={"file": ("x.png", data, "image/png")},
        data={"layer": "blocks.3.0.conv_pw", "format": "npy"},
    )
    assert once.status_code == 200, once.text
    image_id = client.post("/api/images", files={"file": ("x.png", data)}).json()["id"]
    stored = client.get(f"{M}/images/{image_id}/activations/blocks.3.0.conv_pw?format=npy")
    assert np.array_equal(_npy(once.content), _npy(stored.content))
    png = client.post(
        f"{M}/activations",
        files={"file": ("x.png", data)},
        data={"layer": "conv_stem"},
        params={"limit": 4},
    )
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).mode == "P"  # viridis, as an indexed PNG


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "code"),
    [
        ("get", "/api/models/nope/layers", {}, 404, "unknown_model"),
        ("get", f"{M}/layers/nope/filters", {}, 404, "unknown_layer"),
        ("get", f"{M}/layers/bn1/filters", {}, 422, "not_a_conv_layer"),
        ("get", f"{M}/layers/conv_stem/filters?format=gif", {}, 422, "invalid_parameter"),
        (
            "get",
            f"{M}/layers/blocks.2.0.conv_pw/filters?input_channel=999",
            {},
            422,
            "invalid_parameter",
        ),
        ("get", f"{M}/images/{'0' * 64}/predictions", {}, 404, "unknown_image"),
        ("get", f"{M}/images/notanid/activations/conv_stem", {}, 404, "unknown_image"),
        ("get", "/api/images/" + "f" * 64, {}, 404, "unknown_image"),
        ("get", "/api/models/alexnet/layers", {}, 503, "model_unavailable"),
        # the first block of each stage has no residual, so its drop_path is never called
        ("get", f"{M}/images/{SAMPLE}/activations/blocks.1.0.drop_path", {}, 422, "no_activation"),
        (
            "post",
            "/api/images",
            {"files": {"file": ("e.png", b"", "image/png")}},
            422,
            "invalid_image",
        ),
        (
            "post",
            "/api/images",
            {"files": {"file": ("r.bin", b"\x13\x37" * 99)}},
            415,
            "unsupported_image_type",
        ),
        (
            "post",
            "/api/images",
            {"files": {"file": ("t.png", png_bytes(64, 64)[:300])}},
            422,
            "invalid_image",
        ),
        ("post", "/api/images", {"data": {"nofile": "1"}}, 422, "invalid_parameter"),
        (
            "post",
            f"{M}/activations",
            {"files": {"file": ("x.png", png_bytes())}, "data": {"layer": "nope"}},
            404,
            "unknown_layer",
        ),
    ],
)
def test_errors_have_status_code_and_stable_code(
    client: TestClient, method: str, url: str, kwargs: dict, status: int, code: str
) -> None:
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and body["detail"]
    assert client.get("/healthz").status_code == 200


def test_error_details_point_to_the_valid_choices(client: TestClient, samples) -> None:
    layer = client.get(f"{M}/images/{samples['cat']}/activations/blocks.99").json()
    assert f"GET /api/models/{DEFAULT}/layers" in layer["detail"]
    model = client.get("/api/models/nope/layers").json()
    assert "GET /api/models" in model["detail"] and "efficientnet_lite0" in model["detail"]
    bad = client.get(f"{M}/images/{samples['cat']}/activations/conv_stem?channels=0,99")
    assert bad.status_code == 422 and "0..31" in bad.json()["detail"]
    cmap = client.get(f"{M}/images/{samples['cat']}/activations/conv_stem?colormap=jet")
    assert cmap.status_code == 422 and "viridis" in cmap.json()["detail"]


def test_health_answers_while_the_model_works(client: TestClient) -> None:
    stop = threading.Event()
    done: list[int] = []

    def busy() -> None:
        k = 0
        while not stop.is_set() and k < 6:
            r = client.post(
                f"{M}/activations",
                files={"file": ("x.png", png_bytes(300, 300, seed=100 + k))},
                data={"layer": "conv_head", "format": "npy"},
            )
            done.append(r.status_code)
            k += 1

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        latencies = []
        while worker.is_alive() and len(latencies) < 50:
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
    assert done and set(done) == {200}
    assert len(latencies) >= 3 and max(latencies) < 1.0


def test_openapi_documents_png_and_npy_responses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    acts = paths["/api/models/{model}/images/{image_id}/activations/{layer}"]["get"]
    content = acts["responses"]["200"]["content"]
    assert {"image/png", "application/x-npy", "application/json"} <= set(content)
    filters = paths["/api/models/{model}/layers/{layer}/filters"]["get"]["responses"]["200"]
    assert "image/png" in filters["content"]
    for path in [
        "/healthz",
        "/readyz",
        "/api/models",
        "/api/images",
        "/api/models/{model}/activations",
        "/api/models/{model}/images/{image_id}/predictions",
        "/api/models/{model}/images/{image_id}/channels/{layer}",
        "/api/models/{model}/images/{image_id}/input",
    ]:
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_security_headers(client: TestClient) -> None:
    r = client.get("/api/models")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-request-id"]
