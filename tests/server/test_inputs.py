"""Bounds before tensors: hostile images, oversized bodies, absurd parameters. Never a 500."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from convscope.config import Settings
from convscope.services.facade import Convscope
from tests.server import payloads
from tests.server.conftest import assert_error, assert_serving, wait_ready

M = "/api/models/efficientnet_lite0"


def _upload(client: TestClient, data: bytes, name: str = "x.bin"):  # type: ignore[no-untyped-def]
    return client.post("/api/images", files={"file": (name, data, "application/octet-stream")})


def _input_pixels(client: TestClient, image_id: str) -> np.ndarray:
    view = client.get(f"{M}/images/{image_id}/input")
    assert view.status_code == 200
    return np.asarray(Image.open(io.BytesIO(view.content)).convert("RGB")).astype(int)


@pytest.mark.parametrize(
    ("data", "status", "code", "says"),
    [
        (b"", 422, "invalid_image", "empty"),
        (payloads.png()[:300], 422, "invalid_image", "truncated"),
        (np.random.default_rng(1).bytes(4096), 415, "unsupported_image_type", "JPEG"),
        (payloads.SVG, 415, "unsupported_image_type", "supported format"),
        (payloads.PDF, 415, "unsupported_image_type", "supported format"),
        (payloads.evil_raw_pickle(Path("/nonexistent")), 415, "unsupported_image_type", ""),
    ],
    ids=["zero-bytes", "truncated", "random", "svg", "pdf", "pickle"],
)
def test_not_an_image_is_refused(hard_client: TestClient, data, status, code, says) -> None:  # type: ignore[no-untyped-def]
    assert_error(_upload(hard_client, data), status, code, contains=says)
    # The one-shot route decodes the same way.
    response = hard_client.post(
        f"{M}/activations", files={"file": ("x", data)}, data={"layer": "conv_stem"}
    )
    assert_error(response, status, code)
    assert_serving(hard_client)


def test_tiff_greyscale_and_palette_are_decoded(hard_client: TestClient) -> None:
    cases = {
        "tiff": (payloads.encode(payloads.rgb(50, 40), "TIFF"), "TIFF"),
        "grey": (payloads.encode(Image.new("L", (30, 20), 128), "PNG"), "PNG"),
        "palette": (payloads.palette_png(), "PNG"),
    }
    for name, (data, fmt) in cases.items():
        response = _upload(hard_client, data, f"{name}.img")
        assert response.status_code == 201, response.text
        assert response.json()["format"] == fmt
    grey = _input_pixels(hard_client, _upload(hard_client, cases["grey"][0]).json()["id"])
    assert np.abs(grey - 128).max() <= 1
    # Palette entry 1 is green and opaque; entry 0 (transparent) is not used.
    palette = _input_pixels(hard_client, _upload(hard_client, cases["palette"][0]).json()["id"])
    assert np.abs(palette - [0, 200, 0]).max() <= 1


def test_animated_gif_uses_its_first_frame(hard_client: TestClient) -> None:
    response = _upload(hard_client, payloads.animated_gif(), "anim.gif")
    assert response.status_code == 201 and response.json()["format"] == "GIF"
    pixels = _input_pixels(hard_client, response.json()["id"])
    assert np.abs(pixels - [255, 0, 0]).max() <= 2  # red: frame 0, not the blue frame 1


def test_cmyk_jpeg_becomes_rgb(hard_client: TestClient) -> None:
    response = _upload(hard_client, payloads.cmyk_jpeg(), "cmyk.jpg")
    assert response.status_code == 201 and response.json()["format"] == "JPEG"
    r, g, b = _input_pixels(hard_client, response.json()["id"]).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_is_scaled_not_clipped(hard_client: TestClient) -> None:
    response = _upload(hard_client, payloads.png16(), "deep.png")
    assert response.status_code == 201, response.text
    pixels = _input_pixels(hard_client, response.json()["id"])[..., 0]
    # A ramp over 0..65535 -> 0..255: dark on the left, bright on the right, not all white.
    assert pixels[:, :10].mean() < 64 and pixels[:, -10:].mean() > 192


def test_exif_orientation_is_applied(hard_client: TestClient) -> None:
    response = _upload(hard_client, payloads.exif_rotated(), "rotated.jpg")
    assert response.status_code == 201
    assert (response.json()["width"], response.json()["height"]) == (40, 60)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_decompression_bomb_is_refused_fast_with_little_memory(hard_client: TestClient) -> None:
    bomb = payloads.png_bomb(20_000)
    assert len(bomb) < 100_000  # tens of KB on the wire, 400 megapixels decoded
    before = _rss_kib()
    start = time.perf_counter()
    for route, extra in (("/api/images", {}), (f"{M}/activations", {"layer": "conv_stem"})):
        response = hard_client.post(route, files={"file": ("bomb.png", bomb)}, data=extra)
        assert_error(response, 413, "image_too_large", contains="pixels")
    assert time.perf_counter() - start < 1.0
    assert _rss_kib() - before < 64 * 1024  # decoding would take 400 MB
    # Between Pillow's warning (89 Mpx) and its error (179 Mpx) Pillow would decode: we don't.
    assert_error(_upload(hard_client, payloads.png_bomb(10_000)), 413, "image_too_large")
    assert_serving(hard_client)


@pytest.fixture(scope="module")
def tight_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A service of its own with small output and pixel limits (they are service settings)."""
    from convscope.api.app import create_app

    data = tmp_path_factory.mktemp("tight")
    settings = Settings(
        data_dir=data,
        weights_dir=data,
        models_dir=data / "m",
        max_json_floats=1000,
        max_image_pixels=300_000,  # the bundled samples are at most 640x427
        max_grid_pixels=1_000_000,
    )
    with TestClient(create_app(settings, Convscope(settings))) as client:
        wait_ready(client)
        yield client


def test_our_pixel_limit_applies_before_decoding(tight_client: TestClient) -> None:
    for route, extra in (("/api/images", {}), (f"{M}/activations", {"layer": "conv_stem"})):
        response = tight_client.post(
            route, files={"file": ("a.png", payloads.png(600, 600))}, data=extra
        )
        body = assert_error(response, 413, "image_too_large", contains="CONVSCOPE_MAX_IMAGE_PIXELS")
        assert "360000" in body["detail"]


@pytest.fixture(scope="module")
def small_client(hard_service: Convscope, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The same service behind an app whose upload limit is 64 KiB."""
    from convscope.api.app import create_app

    data = tmp_path_factory.mktemp("small")
    settings = Settings(data_dir=data, models_dir=data / "m", max_upload_bytes=64 * 1024)
    with TestClient(create_app(settings, hard_service)) as client:
        wait_ready(client)
        yield client


def test_body_over_the_limit_is_413_declared_or_chunked(small_client: TestClient) -> None:
    big = os.urandom(512 * 1024)
    declared = small_client.post("/api/images", files={"file": ("big.png", big)})
    assert_error(declared, 413, "payload_too_large", contains="CONVSCOPE_MAX_UPLOAD_BYTES")

    def chunks():  # type: ignore[no-untyped-def]
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(64):
            yield os.urandom(8192)
        yield b"\r\n--xyz--\r\n"

    chunked = small_client.post(
        "/api/images",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert "content-length" not in {k.lower() for k in chunked.request.headers}
    assert_error(chunked, 413, "payload_too_large")
    # Still serving, and a body under the limit still goes through.
    ok = small_client.post("/api/images", files={"file": ("s.png", payloads.png(16, 16, 7))})
    assert ok.status_code == 201, ok.text  # new bytes: created
    assert_serving(small_client)


def test_file_over_the_limit_inside_an_allowed_body(small_client: TestClient) -> None:
    # Under the body limit (which allows form overhead), over the file limit.
    data = os.urandom(64 * 1024 + 10)
    response = small_client.post("/api/images", files={"file": ("f.png", data)})
    assert_error(response, 413, "payload_too_large", contains="CONVSCOPE_MAX_UPLOAD_BYTES")


@pytest.fixture(scope="module")
def cat(hard_client: TestClient) -> str:
    return next(i["id"] for i in hard_client.get("/api/images").json() if i["name"] == "cat")


@pytest.mark.parametrize(
    ("path", "params", "status", "code", "says"),
    [
        (
            "{M}/images/{cat}/activations/conv_stem",
            {"scale": 10**9},
            422,
            "invalid_parameter",
            "scale",
        ),
        ("{M}/layers/conv_stem/filters", {"scale": 10**9}, 422, "invalid_parameter", "scale"),
        (
            "{M}/images/{cat}/activations/conv_stem",
            {"limit": -1},
            422,
            "invalid_parameter",
            "limit",
        ),
        (
            "{M}/images/{cat}/activations/conv_stem",
            {"channels": "0-99999999"},
            422,
            "invalid_parameter",
            "channels",
        ),
        (
            "{M}/images/{cat}/activations/conv_stem",
            {"channels": "5-3"},
            422,
            "invalid_parameter",
            "channels",
        ),
        (
            "{M}/images/{cat}/activations/conv_stem",
            {"channels": "99999999"},
            422,
            "invalid_parameter",
            "0..31",
        ),
        (
            "{M}/images/{cat}/activations/conv_stem",
            {"channels": ",".join(["1"] * 3000)},
            422,
            "invalid_parameter",
            "channels",
        ),
        ("{M}/images/{cat}/predictions", {"top": 10**12}, 422, "invalid_parameter", "top"),
        ("{M}/images/{cat}/channels/conv_stem", {"top": 0}, 422, "invalid_parameter", "top"),
        (
            "{M}/images/{cat}/activations/conv_stem",
            {"padding": 10**6},
            422,
            "invalid_parameter",
            "padding",
        ),
        (
            "{M}/images/{cat}/activations/conv_stem",
            {"colormap": "<script>"},
            422,
            "invalid_parameter",
            "colormap",
        ),
        (
            "{M}/layers/conv_stem/filters",
            {"input_channel": 10**9},
            422,
            "invalid_parameter",
            "input_channel",
        ),
        ("{M}/images/{cat}/activations/" + "x" * 8000, {}, 404, "unknown_layer", "layers"),
        ("{M}/images/" + "f" * 5000 + "/predictions", {}, 404, "unknown_image", ""),
        ("/api/models/" + "m" * 5000 + "/layers", {}, 404, "unknown_model", ""),
        (
            "{M}/images/{cat}/activations/conv_stem",
            {"format": "exe"},
            422,
            "invalid_parameter",
            "format",
        ),
    ],
)
def test_absurd_parameters_are_422_or_404(  # type: ignore[no-untyped-def]
    hard_client: TestClient, cat: str, path, params, status, code, says
) -> None:
    url = path.replace("{M}", M).replace("{cat}", cat)
    response = hard_client.get(url, params=params)
    body = assert_error(response, status, code, contains=says)
    assert len(response.content) < 8000  # echoed input is clipped, never megabytes back
    assert body["detail"]
    assert_serving(hard_client)


@pytest.mark.parametrize(
    ("path", "params", "valid"),
    [
        ("{M}/images/{cat}/predictions", {"k": "2"}, "expected top"),
        ("{M}/images/{cat}/activations/conv_stem", {"formt": "npy"}, "format"),
        ("{M}/layers/conv_stem/filters", {"format": "png", "scal": "4"}, "scale"),
        ("/api/models", {"verbose": "1"}, "no query parameters"),
    ],
    ids=["predictions-k", "activations-typo", "filters-typo", "none-taken"],
)
def test_unknown_query_parameter_is_named_not_ignored(  # type: ignore[no-untyped-def]
    hard_client: TestClient, cat: str, path, params, valid
) -> None:
    """A typo would otherwise quietly serve the defaults: 422 names it and what is valid."""
    url = path.replace("{M}", M).replace("{cat}", cat)
    response = hard_client.get(url, params=params)
    unknown = next(k for k in params if k not in ("format",))
    body = assert_error(response, 422, "invalid_parameter", contains=valid)
    assert body["detail"].startswith(f"{unknown}: unknown query parameter"), body
    assert body["parameter"] == unknown
    # Spelled right, the same request is served.
    fixed = {k: v for k, v in params.items() if k == "format"}
    assert hard_client.get(url, params=fixed).status_code == 200
    assert_serving(hard_client)


def test_form_field_sent_in_the_query_is_pointed_to_the_body(hard_client: TestClient) -> None:
    """The one-shot POST takes ``format`` as a form field: in the query it says so."""
    image = payloads.encode(payloads.rgb(64, 48), "PNG")
    response = hard_client.post(
        f"{M}/activations",
        params={"format": "npy"},
        files={"file": ("x.png", image)},
        data={"layer": "conv_stem"},
    )
    assert_error(response, 422, "invalid_parameter", contains="format: a form field")
    ok = hard_client.post(
        f"{M}/activations",
        files={"file": ("x.png", image)},
        data={"layer": "conv_stem", "format": "npy"},
    )
    assert ok.status_code == 200 and ok.content.startswith(b"\x93NUMPY")


def test_job_preview_takes_its_cache_busting_version(hard_client: TestClient) -> None:
    """The UI's preview <img> adds ?v=<version>; it is declared, so not refused."""
    response = hard_client.get("/api/jobs/nope/preview.png", params={"v": 3})
    assert_error(response, 404, "unknown_job", contains="nope")
    bad = hard_client.get("/api/jobs/nope/preview.png", params={"version": 3})
    assert_error(bad, 422, "invalid_parameter", contains="expected v")


def test_huge_json_is_refused_with_a_hint(tight_client: TestClient) -> None:
    client = tight_client
    cat = next(i["id"] for i in client.get("/api/images").json() if i["name"] == "cat")
    response = client.get(
        f"{M}/images/{cat}/activations/conv_stem", params={"format": "json", "dtype": "float32"}
    )
    assert_error(response, 422, "response_too_large", contains="format=npy")
    filters = client.get(f"{M}/layers/blocks.6.0.conv_pw/filters", params={"format": "json"})
    assert_error(filters, 422, "response_too_large", contains="format=npy")
    grid = client.get(f"{M}/images/{cat}/activations/conv_stem", params={"scale": 32})
    assert_error(grid, 422, "response_too_large", contains="scale")
