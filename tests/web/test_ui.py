"""The web UI in a real browser (Debian Chromium via Playwright), served by the API itself and
through the nginx front. Screenshots go to artifacts/screenshots/ for a person to look at."""

from __future__ import annotations

import io
import json
import os
import urllib.request

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.web.conftest import images, query

pytestmark = pytest.mark.web

GRID_READY = """(sel) => {
  const panel = document.querySelector(sel);
  const img = panel && panel.querySelector('.grid-img');
  return panel && panel.getAttribute('aria-busy') === 'false'
    && img && img.complete && img.naturalWidth > 0;
}"""


def open_ui(page, base: str, search: str = "") -> None:
    page.goto(f"{base}/{search}")
    page.wait_for_selector("#layer-list li[aria-selected='true']")


def pick(page, name: str) -> None:
    page.locator(".thumb", has_text=name).first.click()


def wait_grid(page, selector: str = "#activations") -> None:
    page.wait_for_function(GRID_READY, arg=selector)


def settled(page, selector: str) -> None:
    """Wait until no panel inside ``selector`` is loading."""
    page.wait_for_function(
        "(s) => !document.querySelector(`${s} [aria-busy='true'], ${s}[aria-busy='true']`)",
        arg=selector,
    )


def png_bytes(size: tuple[int, int] = (320, 240)) -> bytes:
    image = Image.new("RGB", size)
    image.putdata(
        [(x % 256, y % 256, (x * y) % 256) for y in range(size[1]) for x in range(size[0])]
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_default_sample_then_another(page, base_url, shoot, console):
    open_ui(page, base_url, "?layer=conv_stem")
    state = query(page)
    assert state["model"] == "efficientnet_lite0"
    assert page.locator("#model-select").input_value() == "efficientnet_lite0"
    # No image in the link: the cat sample is filled in (test_first_screen checks the bare URL).
    page.wait_for_function("() => new URL(location).searchParams.get('image')")
    assert query(page)["image"] == images(base_url)["cat"]
    wait_grid(page, "#filters")
    wait_grid(page)
    page.wait_for_selector("#predictions .prediction")
    labels = page.locator("#predictions .prediction-label").all_inner_texts()
    assert len(labels) == 5
    assert "cat" in labels[0] or "tabby" in labels[0]
    page.wait_for_function("() => document.querySelector('#input .input-img').naturalWidth === 224")
    shoot(page, "main-cat")

    pick(page, "coffee")
    page.wait_for_function(
        "(i) => new URL(location).searchParams.get('image') === i", arg=images(base_url)["coffee"]
    )
    wait_grid(page)
    assert page.locator("#images .thumb[aria-pressed='true'] .thumb-name").inner_text() == "coffee"
    # Nothing was fetched from outside the page's origin.
    origin = base_url.rstrip("/")
    assert [u for u in console.requests if not u.startswith((origin, "blob:", "data:"))] == []


def test_walk_layers_by_keyboard_and_back_button(page, api_url, shoot):
    cat = images(api_url)["cat"]
    open_ui(page, api_url, f"?image={cat}&layer=conv_stem")
    wait_grid(page)
    visited = [query(page)["layer"]]
    page.locator("#layer-list").focus()
    for _ in range(3):
        page.keyboard.press("ArrowDown")
        page.wait_for_function(
            "(l) => new URL(location).searchParams.get('layer') !== l", arg=visited[-1]
        )
        visited.append(query(page)["layer"])
    # Pass-through modules (bn1.drop, bn1.act: bn1's output again) are hidden by default.
    assert visited == ["conv_stem", "bn1", "blocks", "blocks.0"]
    wait_grid(page)
    assert page.locator("#layer-list [aria-selected='true'] .layer-name").inner_text() == "blocks.0"
    assert "blocks.0" in page.locator("#filters").inner_text()  # no filters: says so

    # The filter box narrows the list; a click picks a deep layer.
    page.fill("#layer-filter", "blocks.5.0.conv_pw")
    shown = page.locator("#layer-list li:not([hidden]) .layer-name").all_inner_texts()
    assert shown == ["blocks.5.0.conv_pw", "blocks.5.0.conv_pwl"]
    page.locator("#layer-list li:not([hidden])").first.click()
    page.wait_for_function(
        "() => new URL(location).searchParams.get('layer') === 'blocks.5.0.conv_pw'"
    )
    wait_grid(page)
    wait_grid(page, "#filters")
    assert "672" in page.locator("#activations .muted").first.inner_text()
    shoot(page, "deep-layer")

    page.go_back()
    page.wait_for_function("() => new URL(location).searchParams.get('layer') === 'blocks.0'")
    wait_grid(page)
    assert page.locator("#layer-list [aria-selected='true'] .layer-name").inner_text() == "blocks.0"
    page.go_back()
    page.wait_for_function("() => new URL(location).searchParams.get('layer') === 'blocks'")


def test_channel_view_values_and_overlay(page, base_url, shoot):
    cat = images(base_url)["cat"]
    open_ui(page, base_url, f"?image={cat}&layer=blocks.1.0.conv_pw&order=mean")
    wait_grid(page)
    expect(page.locator("#activations")).to_contain_text("strongest mean activation first")
    grid = page.locator("#activations .grid-frame")
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.03, box["y"] + box["height"] * 0.03)
    assert page.locator("#activations .tile-tip").inner_text().startswith("channel ")
    page.mouse.click(box["x"] + box["width"] * 0.03, box["y"] + box["height"] * 0.03)
    page.wait_for_selector("#channel:not([hidden])")
    channel = query(page)["channel"]
    with urllib.request.urlopen(
        f"{base_url}/api/models/efficientnet_lite0/images/{cat}/channels/blocks.1.0.conv_pw?top=1"
    ) as response:
        strongest = json.load(response)["top"][0]["index"]
    assert int(channel) == strongest  # the first tile in mean order is the strongest channel

    settled(page, "#channel")
    page.wait_for_function("() => document.querySelector('#channel .channel-img').naturalWidth > 0")
    page.locator("#channel .channel-img").hover()  # scrolls it into view, points at the centre
    readout = page.locator("#channel .readout").inner_text()
    where, value = readout.split(": ")
    x, y = (int(part.split()[1]) for part in where.split(", "))
    assert 54 <= x <= 57 and 54 <= y <= 57  # the centre of a 112x112 map
    with urllib.request.urlopen(
        f"{base_url}/api/models/efficientnet_lite0/images/{cat}/activations/blocks.1.0.conv_pw"
        f"?format=json&dtype=float32&channels={channel}"
    ) as response:
        data = json.load(response)["channels"][0]["data"]
    assert float(value) == pytest.approx(data[y][x], abs=1e-4)  # the float under the cursor

    page.fill("#overlay-opacity", "30")
    page.wait_for_function("() => new URL(location).searchParams.get('opacity') === '0.3'")
    assert (
        page.locator("#channel .overlay-top").evaluate("e => getComputedStyle(e).opacity") == "0.3"
    )
    page.select_option("#opt-colormap", "magma")
    page.wait_for_function("() => new URL(location).searchParams.get('colormap') === 'magma'")
    settled(page, "#channel")
    shoot(page, "channel")

    # Keyboard: step to the next channel, then close.
    page.get_by_role("button", name="Next channel").click()
    page.wait_for_function(
        "(c) => new URL(location).searchParams.get('channel') === String(c)", arg=int(channel) + 1
    )
    page.get_by_role("button", name="Close").click()
    page.wait_for_selector("#channel", state="hidden")


def test_grid_keyboard_opens_channel(page, api_url):
    cat = images(api_url)["cat"]
    open_ui(page, api_url, f"?image={cat}&layer=blocks.6.0.conv_pwl&limit=16")
    wait_grid(page)
    page.locator("#activations .grid-frame").focus()
    page.keyboard.press("ArrowRight")  # cursor on the first tile
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.wait_for_function("() => new URL(location).searchParams.get('channel') === '1'")


def test_filter_grid_hover_and_enlarge(page, api_url):
    open_ui(page, api_url, "?layer=conv_stem")
    wait_grid(page, "#filters")
    page.locator("#filters .grid-frame").scroll_into_view_if_needed()
    frame = page.locator("#filters .grid-frame").bounding_box()
    page.mouse.move(frame["x"] + 3, frame["y"] + 3)
    assert page.locator("#filters .tile-tip").inner_text() == "filter 0"
    page.mouse.click(frame["x"] + frame["width"] - 3, frame["y"] + 3)  # last tile of row one
    page.wait_for_selector("#filters .zoom:not([hidden])")
    page.wait_for_function(
        "() => document.querySelector('#filters .zoom').innerText.includes('weights from')"
    )
    assert page.locator("#filters .zoom").inner_text().startswith("Filter ")


def test_upload_drop_and_paste(page, base_url, shoot):
    cat = images(base_url)["cat"]
    open_ui(page, base_url)
    page.wait_for_function("(c) => new URL(location).searchParams.get('image') === c", arg=cat)
    page.set_input_files(
        "#image-file",
        files=[{"name": "gradient.png", "mimeType": "image/png", "buffer": png_bytes()}],
    )
    page.wait_for_function("(c) => new URL(location).searchParams.get('image') !== c", arg=cat)
    uploaded = query(page)["image"]
    page.wait_for_selector(f".thumb[data-image='{uploaded}'][aria-pressed='true'] .badge")
    wait_grid(page)
    page.wait_for_function("() => document.querySelector('#input .input-img').naturalWidth > 0")
    shoot(page, "uploaded")

    payload = list(png_bytes((200, 300)))
    for kind in ("drop", "paste"):
        before = query(page)["image"]
        page.evaluate(
            """([kind, bytes]) => {
              const file = new File([new Uint8Array(bytes)], `${kind}.png`, { type: 'image/png' });
              const data = new DataTransfer();
              data.items.add(file);
              if (kind === 'drop') {
                const init = { dataTransfer: data, bubbles: true, cancelable: true };
                document.querySelector('#images').dispatchEvent(new DragEvent('drop', init));
              } else {
                const init = { clipboardData: data, bubbles: true, cancelable: true };
                window.dispatchEvent(new ClipboardEvent('paste', init));
              }
            }""",
            [kind, payload if kind == "drop" else list(png_bytes((210, 300)))],
        )
        page.wait_for_function(
            "(b) => new URL(location).searchParams.get('image') !== b", arg=before
        )
        wait_grid(page)


def test_bad_file_shows_inline_error(page, base_url, console, shoot):
    console.allow("Failed to load resource")  # Chromium logs the 4xx answer itself
    open_ui(page, base_url)
    page.set_input_files(
        "#image-file",
        files=[{"name": "junk.png", "mimeType": "image/png", "buffer": os.urandom(4096)}],
    )
    alert = page.locator("#images [role='alert']")
    alert.wait_for()
    text = alert.inner_text()
    assert len(text) > 10 and "{" not in text  # the server's plain-words detail, not raw JSON
    assert "image" in text.lower()
    # the picker still works, and the listing (if it lands after the refusal) keeps the alert
    page.wait_for_function("() => document.querySelectorAll('#images .thumb').length >= 4")
    assert alert.is_visible()
    assert query(page)["image"] == images(base_url)["cat"]  # still the default sample
    shoot(page, "bad-file")
    assert all(
        "Failed to load resource" in e and ("415" in e or "422" in e) for e in console.errors
    )


def test_upload_error_outlives_the_image_listing(page, base_url, console):
    """An upload refused before the image listing arrives keeps its error on screen.

    The listing is held back until the refusal is shown, then let through: drawing the
    thumbnails must not replace the error with the "pick a sample" hint.
    """
    console.allow("Failed to load resource")
    held = []

    def hold_listing(route):
        if route.request.method == "GET":
            held.append(route)
        else:
            route.continue_()

    page.route("**/api/images", hold_listing)
    open_ui(page, base_url)
    page.set_input_files(
        "#image-file",
        files=[{"name": "junk.png", "mimeType": "image/png", "buffer": b"not an image" * 64}],
    )
    alert = page.locator("#images [role='alert']")
    alert.wait_for()
    refusal = alert.inner_text()
    assert held, "the UI asked for the image listing before the upload was refused"
    assert page.locator(".thumb").count() == 0
    for route in held:
        route.continue_()
    page.wait_for_function("() => document.querySelectorAll('#images .thumb').length >= 4")
    assert alert.is_visible() and alert.inner_text() == refusal
    # The default sample filled in when the listing landed is not a pick: the refusal stays.
    assert query(page)["image"] == images(base_url)["cat"]
    pick(page, "coffee")  # a picked image ends the refusal's message
    page.wait_for_function("() => !document.querySelector('#images .msg')")
    wait_grid(page)
    assert page.locator("#images .msg").count() == 0


def test_permalink_restores_everything(new_page, base_url):
    cat = images(base_url)["cat"]
    first = new_page()
    open_ui(first, base_url)
    pick(first, "cat")
    wait_grid(first)
    first.fill("#layer-filter", "blocks.2.0.conv_dw")
    first.locator("#layer-list li:not([hidden])").first.click()
    first.select_option("#opt-order", "mean")
    first.select_option("#opt-normalize", "layer")
    first.select_option("#opt-colormap", "inferno")
    first.select_option("#opt-limit", "32")
    wait_grid(first)
    first.locator("#activations .grid-frame").focus()
    first.keyboard.press("ArrowRight")
    first.keyboard.press("Enter")
    first.wait_for_selector("#channel:not([hidden])")
    link = first.url

    fresh = new_page()
    fresh.goto(link)
    wait_grid(fresh)
    state = query(fresh)
    assert state == query(first)
    assert state["image"] == cat and state["layer"] == "blocks.2.0.conv_dw"
    assert (
        fresh.locator("#layer-list [aria-selected='true'] .layer-name").inner_text()
        == "blocks.2.0.conv_dw"
    )
    for select, value in [
        ("#opt-order", "mean"),
        ("#opt-normalize", "layer"),
        ("#opt-colormap", "inferno"),
        ("#opt-limit", "32"),
    ]:
        assert fresh.locator(select).input_value() == value
    fresh.wait_for_selector("#channel:not([hidden])")
    assert fresh.locator("#channel-number").input_value() == state["channel"]
    assert "32 of 144 channels" in fresh.locator("#activations").inner_text()


def test_compare_mode(page, base_url, shoot):
    ids = images(base_url)
    open_ui(page, base_url, f"?image={ids['cat']}&layer=blocks.3.0.conv_pw")
    wait_grid(page)
    page.select_option("#compare-select", label="coffee")
    page.wait_for_function("() => document.body.classList.contains('compare-on')")
    assert query(page)["compare"] == ids["coffee"]
    for i in (1, 2):
        wait_grid(page, f"#compare .compare-col:nth-child({i}) .compare-acts")
    names = page.locator("#compare .compare-name").all_inner_texts()
    assert names == ["cat", "coffee"]
    assert page.locator("#activations").is_hidden()
    page.locator("#compare .compare-col:nth-child(2) .grid-frame").click(
        position={"x": 12, "y": 12}
    )
    page.wait_for_selector("#channel:not([hidden])")
    assert page.locator("#channel .cp-maps .subpanel").count() == 2  # one map per image
    settled(page, "#channel")
    shoot(page, "compare", full_page=True)
    page.select_option("#compare-select", value="")
    page.wait_for_function("() => !document.body.classList.contains('compare-on')")
    wait_grid(page)


def test_unknown_names_in_link_are_explained(page, api_url, console):
    console.allow("Failed to load resource")
    open_ui(page, api_url, "?model=nope&layer=conv_stem")
    expect(page.locator("#model-picker")).to_contain_text("no model “nope”")
    page.goto(f"{api_url}/?layer=not.a.layer")
    page.wait_for_selector("#layers [role='alert']")
    assert "not.a.layer" in page.locator("#layers [role='alert']").inner_text()


def test_phone_width(new_page, api_url, shoot):
    page = new_page(390, 844)
    open_ui(page, api_url)
    pick(page, "astronaut")
    wait_grid(page)
    wide = page.evaluate(
        """() => [...document.querySelectorAll('body *')]
             .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
             .filter((e) => !e.closest('.thumbs'))
             .map((e) => `${e.tagName}.${e.className}#${e.id}`).slice(0, 5)"""
    )
    assert page.evaluate("() => document.scrollingElement.scrollWidth - window.innerWidth") <= 1, (
        wide
    )
    shoot(page, "phone", full_page=True)


def test_every_control_has_a_label(page, api_url):
    cat = images(api_url)["cat"]
    open_ui(page, api_url, f"?image={cat}&channel=0")
    page.wait_for_selector("#channel:not([hidden])")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, [tabindex="0"]')]
             .filter((el) => el.offsetParent !== null || el.id === 'image-file')
             .filter((el) => !el.labels?.length && !el.getAttribute('aria-label'))
             .filter((el) => !el.textContent.trim())
             .map((el) => el.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == []


def test_state_round_trips_through_the_url(page, api_url):
    open_ui(page, api_url)
    result = page.evaluate(
        """async () => {
          const s = await import('/js/state.js');
          const state = s.patch(s.parse(''), {
            model: 'm', layer: 'blocks.1.0', image: 'abc', channel: 7, compare: 'def',
            order: 'mean', colormap: 'gray', normalize: 'layer', limit: 0, opacity: 0.25,
          });
          const again = s.parse(s.serialize(state));
          return { same: s.equal(state, again), text: s.serialize(state),
                   bad: s.parse('?order=evil&limit=7&channel=-1&colormap=<b>'),
                   switched: s.patch(state, { model: 'other' }) };
        }"""
    )
    assert result["same"]
    assert "layer=blocks.1.0" in result["text"] and "limit=0" in result["text"]
    assert result["bad"]["order"] == "index" and result["bad"]["limit"] == 64
    assert result["bad"]["channel"] is None and result["bad"]["colormap"] == "viridis"
    assert result["switched"]["layer"] is None and result["switched"]["channel"] is None
