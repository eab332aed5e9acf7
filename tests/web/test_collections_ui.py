"""Collections view and the unit page's dataset examples, in a real browser against the API:
create a collection, add images (files and a zip archive), index it with a progress bar,
read the layer's statistics, then open a unit page and click an example."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.web.conftest import REPO, query

pytestmark = pytest.mark.web

MODEL = "efficientnet_lite0"
LOADED = """(sel) => {
  const imgs = [...document.querySelectorAll(sel)];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


def _photos(folder: Path, count: int) -> list[Path]:
    """Crops and flips of the bundled cat and coffee photos, as JPEG files."""
    samples = REPO / "backend" / "convscope" / "data" / "samples"
    sources = [Image.open(samples / n).convert("RGB") for n in ("chelsea.jpg", "coffee.jpg")]
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        photo = sources[i % 2]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.5, 0.9))
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        image = photo.crop((x, y, x + side, y + side)).resize((160, 160))
        if i % 3 == 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"photo{i}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def test_collection_index_and_unit_page(page, api_url: str, tmp_path: Path, shoot, console) -> None:  # type: ignore[no-untyped-def]
    console.allow("404 (Not Found)")  # the statistics of a collection not indexed yet
    photos = _photos(tmp_path, 10)
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in photos[6:]:
            z.write(p, f"sub/{p.name}")
        z.writestr("../escape.jpg", photos[0].read_bytes())
    page.goto(f"{api_url}/?model={MODEL}&layer=blocks.4")
    page.wait_for_selector("#collections .collection-list li")
    assert "built-in photos" in page.inner_text("#collections .collection-list")

    page.fill("#collection-name", "web photos")
    page.click("#collections form button[type=submit]")
    page.wait_for_function("() => new URLSearchParams(location.search).get('coll')")
    cid = query(page)["coll"]
    page.wait_for_selector("#collection-drop", state="visible")

    page.set_input_files("#collection-files", [str(p) for p in photos[:6]])
    page.wait_for_selector("#collections .collection-report >> text=Added 6")
    page.set_input_files("#collection-files", [str(archive)])
    page.wait_for_selector("#collections .collection-report >> text=Added 4")
    assert "../escape.jpg: path with '..'" in page.inner_text("#collections .collection-report")

    page.click("#index-button")
    page.wait_for_selector("#index-progress", state="visible")
    page.wait_for_selector("#collections >> text=Index ready.", timeout=240_000)
    page.wait_for_selector("#collections .dead-channels")
    assert "over 10 images" in page.inner_text("#collections .collection-stats")

    # A mid-depth conv layer: patches smaller than the image, filter weights to show.
    page.goto(f"{api_url}/?model={MODEL}&layer=blocks.2.0.conv_pwl&channel=3&coll={cid}")
    page.wait_for_selector("#channel-examples .example-tile", timeout=120_000)
    page.wait_for_function(LOADED, arg="#channel-examples .example-patch img")
    tiles = page.query_selector_all("#channel-examples .example-tile")
    assert len(tiles) == 9
    scores = [float(t.inner_text().strip()) for t in tiles]
    assert scores == sorted(scores, reverse=True)
    tiles[0].click()
    page.wait_for_function(LOADED, arg="#channel-examples .examples-detail img")
    caption = page.inner_text("#channel-examples .examples-detail figcaption")
    assert caption.startswith("Rank 1:")
    path = shoot(page, "unit_page_examples", full_page=True)
    page.evaluate("document.querySelector('.topbar').style.position = 'static'")
    page.locator("#channel").screenshot(path=str(path.with_name("unit_page_panel.png")))

    # Another channel: other examples; the picker offers every collection.
    page.click("#channel button[aria-label='Next channel']")
    page.wait_for_function("() => new URLSearchParams(location.search).get('channel') === '4'")
    page.wait_for_function(LOADED, arg="#channel-examples .example-patch img")
    names = page.eval_on_selector_all("#examples-collection option", "os => os.map(o => o.text)")
    assert any(n.startswith("web photos (10)") for n in names)


def test_unindexed_collection_offers_to_index(page, api_url: str, console) -> None:  # type: ignore[no-untyped-def]
    console.allow("404 (Not Found)")  # index_not_found: what the panel explains
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{api_url}/api/collections",
        data=json.dumps({"name": "not indexed"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        cid = json.load(response)["id"]
    page.goto(f"{api_url}/?model={MODEL}&layer=blocks.4&channel=1&coll={cid}")
    page.wait_for_selector("#channel-examples .msg-error")
    assert "POST /api/models/" in page.inner_text("#channel-examples .msg-error")
    assert page.is_visible("#channel-examples >> text=Index this collection")
