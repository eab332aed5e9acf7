"""The first five minutes (issue #13) in a real browser against the real API: the bare URL's
first screen, no broken picture on a slow network, private uploads, slow attributions as
jobs with progress and cancel, the pass-through toggle and collapsible blocks of the layer
list, colour legends that say what the colours mean in numbers."""

from __future__ import annotations

import io
import json
import math
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.web.conftest import images, query

pytestmark = pytest.mark.web

MODEL = "efficientnet_lite0"
READY = """(sel) => {
  const img = document.querySelector(`${sel} .grid-img`);
  const panel = document.querySelector(sel);
  return panel.getAttribute('aria-busy') === 'false' && img && img.complete && img.naturalWidth > 0;
}"""
SETTLED = """() => !document.querySelector("[aria-busy='true']") &&
  [...document.querySelectorAll('.layout img')]
    .filter((i) => i.offsetParent && i.getAttribute('src'))
    .every((i) => i.complete && i.naturalWidth > 0)"""

# Checked on every animation frame: a picture on screen is either drawn, or invisible. A
# broken one (loaded, no pixels), an empty <img> that takes space, or an <img> that never had
# a picture while its alt text could be drawn, is recorded; so are panel titles that overlap.
MONITOR = """(() => {
  const seen = new WeakSet();
  window.__bad = [];
  window.__frames = 0;
  const name = (e) => `${e.tagName.toLowerCase()}.${e.className}` +
    ` in #${e.closest('section[id], aside[id]')?.id}`;
  const shown = (e) => {
    if (!e.offsetParent) return false;
    const style = getComputedStyle(e);
    const box = e.getBoundingClientRect();
    return style.visibility !== 'hidden' && box.width > 0 && box.height > 0;
  };
  const check = () => {
    window.__frames += 1;
    for (const img of document.querySelectorAll('.layout img')) {
      if (!shown(img)) continue;
      if (img.complete && img.naturalWidth > 0) { seen.add(img); continue; }
      if (img.complete) window.__bad.push(`broken or empty picture: ${name(img)}`);
      else if (!seen.has(img) && img.alt) window.__bad.push(`alt text while loading: ${name(img)}`);
    }
    const titles = [...document.querySelectorAll('.panel-title')].filter(shown)
      .map((t) => [t, t.getBoundingClientRect()]);
    for (let i = 0; i < titles.length; i++) {
      for (let j = i + 1; j < titles.length; j++) {
        const [a, b] = [titles[i][1], titles[j][1]];
        const x = Math.min(a.right, b.right) - Math.max(a.left, b.left);
        const y = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        if (x > 1 && y > 1) {
          const pair = `${titles[i][0].textContent} / ${titles[j][0].textContent}`;
          window.__bad.push(`titles overlap: ${pair}`);
        }
      }
    }
    requestAnimationFrame(check);
  };
  const start = () => requestAnimationFrame(check);
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();"""

IDENTITY_TYPES = {
    "Identity",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "DropPath",
    "DropBlock2d",
    "StochasticDepth",
}


def get_json(url: str):
    with urllib.request.urlopen(url) as response:
        return json.load(response)


def layer_table(base: str) -> list[dict]:
    return get_json(f"{base}/api/models/{MODEL}/layers")


def mid_depth_layer(layers: list[dict]) -> str:
    """The layer the issue asks for, stated independently of the UI code: the middle one of
    the conv layers whose kernels are pictures (larger than 1x1) and whose output is maps."""
    convs = [
        layer
        for layer in layers
        if layer["has_filters"]
        and len(layer["output_shape"] or []) == 3
        and max(layer["kernel_size"]) > 1
    ]
    return convs[len(convs) // 2]["name"]


def expected_pass_through(layers: list[dict]) -> set[str]:
    """Identity-at-inference modules, and a parameter-free leaf that is the last child of a
    module with parameters of its own and has its output shape (timm's BatchNormAct2d.act)."""
    names = {layer["name"] for layer in layers}
    out = {layer["name"] for layer in layers if layer["type"] in IDENTITY_TYPES}
    for parent in layers:
        if not parent["params"]:
            continue
        kids = [
            layer
            for layer in layers
            if layer["name"].rpartition(".")[0] == parent["name"] and layer["name"] in names
        ]
        if not kids:
            continue
        last = kids[-1]
        leaf = not any(other["name"].startswith(last["name"] + ".") for other in layers)
        if leaf and not last["params"] and last["output_shape"] == parent["output_shape"]:
            out.add(last["name"])
    return out


def png_bytes(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bare_url_shows_photo_predictions_maps_and_filters(page, base_url, shoot):
    """No parameters, no click: a sample photo at a mid-depth layer, with everything on it."""
    layers = layer_table(base_url)
    page.goto(f"{base_url}/")
    page.wait_for_function(READY, arg="#activations")
    page.wait_for_function(READY, arg="#filters")
    state = query(page)
    assert state["image"] == images(base_url)["cat"]
    assert state["layer"] == mid_depth_layer(layers)
    page.wait_for_function("() => document.querySelector('#input .input-img').naturalWidth === 224")
    page.wait_for_selector("#predictions .prediction")
    labels = page.locator("#predictions .prediction-label").all_inner_texts()
    assert len(labels) == 5 and ("cat" in labels[0] or "tabby" in labels[0])
    layer = state["layer"]
    assert page.locator("#activations .panel-title").inner_text() == f"Feature maps of {layer}"
    assert page.locator("#filters .panel-title").inner_text() == f"Filters of {layer}"
    # The filter grid uses the panel's width, not the PNG's few hundred pixels.
    grid = page.locator("#filters .grid-frame").bounding_box()
    body = page.locator("#filters .panel-body").bounding_box()
    assert grid["width"] >= 0.9 * body["width"]
    page.wait_for_function(SETTLED)
    shoot(page, "first-screen")

    # A layer without filters: the filter panel's title follows (it does not keep the old one).
    page.fill("#layer-filter", "blocks.1.0.bn1")
    page.locator("#layer-list li:not([hidden])", has_text="BatchNormAct2d").first.click()
    page.wait_for_function("() => new URL(location).searchParams.get('layer') === 'blocks.1.0.bn1'")
    page.wait_for_function(READY, arg="#activations")
    assert page.locator("#filters .panel-title").inner_text() == "Filters"
    assert "blocks.1.0.bn1" in page.locator("#filters").inner_text()
    assert (
        page.locator("#activations .panel-title").inner_text() == "Feature maps of blocks.1.0.bn1"
    )


def test_no_broken_picture_on_a_slow_network(page, api_url, console):
    """Every animation frame of a first load and of layer and image switches, 250 ms a request."""
    page.add_init_script(MONITOR)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 250, "downloadThroughput": 2_000_000, "uploadThroughput": -1},
    )
    page.goto(f"{api_url}/")
    page.wait_for_function(SETTLED, timeout=120_000)
    for name in ("conv_stem", "blocks.5.0.conv_pw", "bn1"):
        page.fill("#layer-filter", name)
        page.locator("#layer-list li:not([hidden])").first.click()
        page.wait_for_function("(l) => new URL(location).searchParams.get('layer') === l", arg=name)
        page.wait_for_function(SETTLED, timeout=120_000)
    for sample in ("coffee", "rocket"):
        page.locator(".thumb", has_text=sample).first.click()
        page.wait_for_function(
            "(i) => new URL(location).searchParams.get('image') === i",
            arg=images(api_url)[sample],
        )
        page.wait_for_function(SETTLED, timeout=120_000)
    frames = page.evaluate("() => window.__frames")
    bad = page.evaluate("() => [...new Set(window.__bad)]")
    assert frames > 50, f"only {frames} frames were checked"
    assert bad == []


def test_uploads_are_private_and_deleting_keeps_the_others_copy(browser, api_url, console):
    shared = png_bytes(1)
    own = png_bytes(2)
    contexts = [browser.new_context(viewport={"width": 1280, "height": 800}) for _ in range(2)]
    try:
        pages = []
        for context in contexts:
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda e: console.errors.append(f"pageerror: {e}"))
            page.goto(f"{api_url}/")
            page.wait_for_selector("#images .thumb")
            pages.append(page)
        alice, bob = pages

        def upload(page, name: str, data: bytes) -> str:
            before = query(page).get("image")
            page.set_input_files(
                "#image-file", files=[{"name": name, "mimeType": "image/png", "buffer": data}]
            )
            page.wait_for_function(
                "(b) => new URL(location).searchParams.get('image') !== b", arg=before
            )
            image = query(page)["image"]
            page.wait_for_selector(f".thumb[data-image='{image}'] .badge")
            return image

        same = upload(alice, "mine.png", shared)
        assert upload(bob, "also-mine.png", shared) == same  # content-addressed: one id
        bobs = upload(bob, "private.png", own)

        def uploads(page) -> set[str]:
            return set(
                page.locator("#images .thumb:has(.badge)").evaluate_all(
                    "(els) => els.map((e) => e.dataset.image)"
                )
            )

        assert uploads(alice) == {same}
        alice.reload()
        alice.wait_for_selector("#images .thumb")
        assert uploads(alice) == {same}  # bob's private upload is not listed to alice
        assert uploads(bob) == {same, bobs}
        # No listing without the browser's key (a plain HTTP client) shows any upload.
        listed = {i["id"] for i in get_json(f"{api_url}/api/images") if i["kind"] == "upload"}
        assert not listed & {same, bobs}

        # Alice deletes her copy: gone from her listing, still in bob's and still served to him.
        alice.locator(f"[data-delete='{same}']").click()
        alice.wait_for_function(
            "(i) => !document.querySelector(`.thumb[data-image='${i}']`)", arg=same
        )
        assert query(alice)["image"] == images(api_url)["cat"]  # back on the sample
        bob.reload()
        bob.wait_for_selector(f".thumb[data-image='{same}']")
        assert uploads(bob) == {same, bobs}
        answer = bob.request.get(f"{api_url}/api/images/{same}")
        assert answer.status == 200 and answer.body() == shared
    finally:
        for context in contexts:
            context.close()


def test_score_cam_shows_progress_and_can_be_cancelled(page, api_url):
    cat = images(api_url)["cat"]
    jobs: list[str] = []
    page.on(
        "response",
        lambda r: jobs.append(r.json()["id"]) if "/cam?" in r.url and r.status == 202 else None,
    )
    page.goto(f"{api_url}/?image={cat}&layer=blocks.3.0.conv_pw&cls=281")
    page.wait_for_selector("#layer-list li[aria-selected='true']")
    page.wait_for_function("() => document.querySelector('#cam-panel .cam-top').naturalWidth > 0")
    page.select_option("#cam-method", "scorecam")
    bar = page.locator("#cam-progress")
    page.wait_for_function(
        "() => { const p = document.querySelector('#cam-progress');"
        " return p && !p.closest('[hidden]') && p.value > 0 && p.value < p.max; }",
        timeout=120_000,
    )
    step, total = bar.evaluate("(p) => [p.value, p.max]")
    assert 0 < step < total
    assert jobs, "the UI did not get a job for Score-CAM"
    page.locator("#cam-panel .job-cancel").click()
    page.wait_for_function(
        "() => document.querySelector('#cam-panel').innerText.includes('cancelled')"
    )
    assert page.locator("#cam-progress").is_hidden()
    assert page.locator("#cam-panel [role='alert']").count() == 0
    assert get_json(f"{api_url}/api/jobs/{jobs[-1]}")["state"] == "cancelled"
    assert page.get_by_role("button", name="Run again").is_visible()


def test_pass_through_toggle_and_collapsible_blocks(page, api_url):
    layers = layer_table(api_url)
    expected = expected_pass_through(layers)
    # Spot checks of the rule on the names a person would look at.
    assert {"bn1.drop", "bn1.act", "blocks.0.0.aa", "blocks.1.0.bn1.act"} <= expected
    assert not {"conv_stem", "bn1", "blocks.1.0.conv_pw", "blocks.1.0", "conv_head"} & expected
    page.goto(f"{api_url}/?layer=conv_stem")
    page.wait_for_selector("#layer-list li[aria-selected='true']")

    def hidden() -> set[str]:
        return set(
            page.locator("#layer-list li[hidden]").evaluate_all(
                "(els) => els.map((e) => e.dataset.name)"
            )
        )

    assert page.locator("#layer-passthrough").is_checked()  # on by default
    assert hidden() == expected
    assert page.locator("#layer-hidden-count").inner_text() == (
        f"{len(expected)} pass-through hidden"
    )
    assert (
        page.locator(".layers-head")
        .inner_text()
        .endswith(f"{len(layers) - len(expected)} of {len(layers)}")
    )
    # Keyboard steps skip hidden rows: conv_stem -> bn1 -> blocks (not bn1.drop, bn1.act).
    page.locator("#layer-list").focus()
    for name in ("bn1", "blocks"):
        page.keyboard.press("ArrowDown")
        page.wait_for_function("(l) => new URL(location).searchParams.get('layer') === l", arg=name)

    page.locator("#layer-passthrough").uncheck()
    assert hidden() == set()
    assert page.locator("#layer-hidden-count").inner_text() == ""
    page.locator("#layer-passthrough").check()
    assert hidden() == expected

    # Collapse blocks.1: its descendants leave the list and are counted; expand brings them back.
    page.locator("#layer-list li[data-name='blocks.1'] .layer-fold").click()
    inside = {row["name"] for row in layers if row["name"].startswith("blocks.1.")}
    assert hidden() == expected | inside
    assert (
        f"{len(inside - expected)} in collapsed blocks"
        in page.locator("#layer-hidden-count").inner_text()
    )
    assert (
        page.locator("#layer-list li[data-name='blocks.1']").get_attribute("aria-expanded")
        == "false"
    )
    page.locator("#layer-list li[data-name='blocks.1'] .layer-fold").click()
    assert hidden() == expected
    # A layer named in the link is shown even when its kind is hidden.
    page.goto(f"{api_url}/?layer=bn1.act")
    page.wait_for_selector("#layer-list li[aria-selected='true']")
    assert page.locator("#layer-list li[data-name='bn1.act']").is_visible()


def test_legends_give_the_numbers_of_the_colours(page, api_url):
    """The activation legend's ends are the min and max of the values drawn (layer-wide scale),
    read independently from the NPY of the same channels; CAM and filters have legends too."""
    cat = images(api_url)["cat"]
    layer = "blocks.2.0.conv_pw"
    page.goto(f"{api_url}/?image={cat}&layer={layer}&normalize=layer&limit=16")
    page.wait_for_function(READY, arg="#activations")
    legend = page.locator("#activations .legend")
    low, high = (float(legend.get_attribute(f"data-{k}")) for k in ("low", "high"))
    with urllib.request.urlopen(
        f"{api_url}/api/models/{MODEL}/images/{cat}/activations/{layer}?format=npy&limit=16"
    ) as response:
        values = np.load(io.BytesIO(response.read()))
    assert values.shape[0] == 16
    assert math.isclose(low, float(values.min()), rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(high, float(values.max()), rel_tol=1e-5, abs_tol=1e-6)
    assert legend.get_attribute("data-mode") == "layer"
    assert "one scale for the whole layer" in legend.inner_text()
    # Per channel: hovering a tile shows that channel's own range.
    page.select_option("#opt-normalize", "channel")
    page.wait_for_function("() => new URL(location).searchParams.get('normalize') === null")
    page.wait_for_function(READY, arg="#activations")
    page.wait_for_function(
        "() => document.querySelector('#activations .legend').dataset.mode === 'channel'"
    )
    frame = page.locator("#activations .grid-frame")
    frame.scroll_into_view_if_needed()
    box = frame.bounding_box()
    page.mouse.move(box["x"] + 4, box["y"] + 4)  # the first tile: channel 0
    assert "channel 0" in legend.inner_text()
    low0 = float(legend.get_attribute("data-low"))
    assert math.isclose(low0, float(values[0].min()), rel_tol=1e-5, abs_tol=1e-6)
    for panel in ("#filters", "#cam-panel", "#saliency-panel"):
        page.wait_for_selector(f"{panel} .legend:not([hidden])")
        text = page.locator(f"{panel} .legend").inner_text()
        assert any(ch.isdigit() for ch in text), panel


@pytest.fixture(scope="module")
def untrained_url():
    """A second server that also lists torchvision architectures with random weights
    (CONVSCOPE_UNTRAINED_MODELS): the API reports those as ``verified: false``."""
    from bench.server import running_server

    with running_server(env={"CONVSCOPE_UNTRAINED_MODELS": "true"}, timeout=180) as server:
        yield server.url


def test_unverified_weights_are_labelled(page, untrained_url):
    models = {m["name"]: m for m in get_json(f"{untrained_url}/api/models")}
    assert models["resnet18-untrained"]["verified"] is False
    assert models[MODEL]["verified"] is True
    page.goto(f"{untrained_url}/?model=resnet18-untrained")
    page.wait_for_selector("#layer-list li[aria-selected='true']")
    assert page.locator("#model-unverified").is_visible()
    label = page.locator("#model-select option[value='resnet18-untrained']").inner_text()
    assert "unverified weights" in label
    verified = page.locator(f"#model-select option[value='{MODEL}']").inner_text()
    assert "unverified" not in verified
    page.select_option("#model-select", MODEL)
    page.wait_for_function("(m) => new URL(location).searchParams.get('model') === m", arg=MODEL)
    page.wait_for_selector("#model-unverified", state="hidden")
