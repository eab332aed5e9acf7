"""The API through the repository's nginx config: big headers, uploads, streams."""

import json
import urllib.request

import pytest


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=120) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        return response.status, headers, response.read()


@pytest.mark.web
def test_widest_layer_grid_passes_through_nginx(nginx_url: str) -> None:
    """conv_head has 1280 channels: its X-Convscope-Channels header is ~6 KB."""
    _, _, body = _get(f"{nginx_url}/api/images")
    cat = next(i["id"] for i in json.loads(body) if i["name"] == "cat")
    status, headers, png = _get(
        f"{nginx_url}/api/models/efficientnet_lite0/images/{cat}/activations/conv_head?scale=1"
    )
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    channels = headers["x-convscope-channels"].split(",")
    assert len(channels) == 1280 and channels[-1] == "1279"
