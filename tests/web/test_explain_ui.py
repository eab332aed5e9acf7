"""The channel page (filter weights, feature map, optimised image, Grad-CAM of the top classes)
and the attribution views of the image page, in a real browser against the real API.

Feature visualisation runs on the CPU, so the tests shrink it through the URL
(``fvsteps``/``fvsize``), which the UI honours over its quick/better presets."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.web.conftest import images

pytestmark = pytest.mark.web

MODEL = "efficientnet_lite0"
LOADED = """(sel) => {
  const imgs = [...document.querySelectorAll(sel)];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""
# Record every state and progress value the optimised-image panel goes through.
WATCH_FV = """() => {
  const root = document.querySelector('#channel-fv');
  const bar = root.querySelector('progress');
  window.fvSeen = { states: [root.dataset.state], steps: [] };
  new MutationObserver(() => {
    const seen = window.fvSeen;
    if (seen.states.at(-1) !== root.dataset.state) seen.states.push(root.dataset.state);
    if (!bar.closest('[hidden]') && seen.steps.at(-1) !== bar.value) seen.steps.push(bar.value);
  }).observe(root, { subtree: true, attributes: true, childList: true, characterData: true });
}"""


def top_classes(base: str, image: str, top: int = 5) -> list[dict]:
    url = f"{base}/api/models/{MODEL}/images/{image}/predictions?top={top}"
    with urllib.request.urlopen(url) as response:
        return json.load(response)


def open_ui(page, base: str, search: str) -> None:
    page.goto(f"{base}/{search}")
    page.wait_for_selector("#layer-list li[aria-selected='true']")


def loaded(page, selector: str) -> None:
    page.wait_for_function(LOADED, arg=selector)


def settled(page, selector: str) -> None:
    page.wait_for_function(
        "(s) => !document.querySelector(`${s} [aria-busy='true'], ${s}[aria-busy='true']`)",
        arg=selector,
    )


def fv_state(page, state: str, timeout: float = 120_000) -> None:
    page.wait_for_selector(f"#channel-fv[data-state='{state}']", timeout=timeout)


def test_channel_page_from_permalink(page, base_url, shoot, console):
    cat = images(base_url)["cat"]
    search = f"?image={cat}&layer=blocks.2.0.conv_pw&channel=91&fvsteps=16&fvsize=64"
    open_ui(page, base_url, search)
    page.wait_for_selector("#channel:not([hidden])")
    assert page.locator("#channel .panel-title").first.inner_text() == (
        "Channel 91 of blocks.2.0.conv_pw"
    )
    assert page.evaluate("() => document.body.classList.contains('channel-on')")

    # (a) the channel's weights: one 1x1 slice per input channel of the pointwise conv.
    loaded(page, "#channel-filter .grid-img")
    assert "24 input channels" in page.locator("#channel-filter").inner_text()
    # (b) its feature map on the image, with the value under the cursor.
    loaded(page, "#channel .channel-img")
    page.locator("#channel .channel-img").hover()
    assert ": " in page.locator("#channel .readout").inner_text()
    # (d) Grad-CAM for the three top classes, labelled with names and probabilities.
    loaded(page, "#channel-cam .cam-img")
    top = top_classes(base_url, cat, 3)
    assert page.locator("#channel-cam .cam-img").count() == 3
    assert page.locator("#channel-cam .cam-label").all_inner_texts() == [r["label"] for r in top]
    assert all(p.endswith("%") for p in page.locator("#channel-cam .cam-prob").all_inner_texts())

    # (c) the optimised image: a job with progress, then the result.
    fv_state(page, "idle")
    assert "16 steps, 64 px" in page.locator("#channel-fv").inner_text()
    page.evaluate(WATCH_FV)
    page.get_by_role("button", name="Visualise").click()
    fv_state(page, "done")
    seen = page.evaluate("() => window.fvSeen")
    assert seen["states"][0] == "idle" and seen["states"][-1] == "done"
    assert set(seen["states"]) <= {"idle", "queued", "running", "done"}
    loaded(page, "#channel-fv .fv-img")
    assert page.locator("#channel-fv .fv-img").evaluate("i => i.naturalWidth") == 64
    # The direct and nginx runs share one server: the second one gets the cached result.
    caption = page.locator("#channel-fv").inner_text()
    assert "Done: 16 steps" in caption or "From the cache: 16 steps" in caption
    page.locator("#channel").scroll_into_view_if_needed()
    shoot(page, "channel-page")

    # Step to the next channel and back with the browser: the finished image is remembered.
    page.get_by_role("button", name="Next channel").click()
    page.wait_for_function("() => new URL(location).searchParams.get('channel') === '92'")
    fv_state(page, "idle")
    page.go_back()
    page.wait_for_function("() => new URL(location).searchParams.get('channel') === '91'")
    fv_state(page, "done", timeout=5_000)

    # A fresh page asks the server again: the result is cached, so it answers at once.
    page.reload()
    fv_state(page, "idle")
    with page.expect_response(lambda r: r.url.endswith("/optimize")) as answer:
        page.get_by_role("button", name="Visualise").click()
    assert answer.value.status == 200
    fv_state(page, "done", timeout=5_000)
    origin = base_url.rstrip("/")
    assert [u for u in console.requests if not u.startswith((origin, "blob:", "data:"))] == []


def test_visualisation_progress_and_cancel(page, api_url, shoot):
    cat = images(api_url)["cat"]
    open_ui(page, api_url, f"?image={cat}&layer=blocks.4&channel=7&fvsteps=1000&fvsize=96")
    fv_state(page, "idle")
    page.evaluate(WATCH_FV)
    page.get_by_role("button", name="Visualise").click()
    fv_state(page, "running")
    bar = page.locator("#channel-fv progress")
    page.wait_for_function("() => document.querySelector('#channel-fv progress').value >= 3")
    assert bar.get_attribute("max") == "1000"
    assert "Step " in page.locator("#channel-fv .fv-bar").inner_text()
    page.wait_for_function(LOADED, arg="#channel-fv .fv-img")  # the live preview
    shoot(page, "channel-fv-running")
    page.get_by_role("button", name="Cancel").click()
    fv_state(page, "cancelled", timeout=30_000)
    steps = page.evaluate("() => window.fvSeen.steps")
    assert len(steps) >= 2 and steps == sorted(steps)  # it moved, forwards only
    assert "Cancelled at step" in page.locator("#channel-fv").inner_text()
    assert page.get_by_role("button", name="Visualise again").is_visible()


def test_weights_of_rgb_and_weightless_layers(page, api_url):
    open_ui(page, api_url, "?layer=conv_stem&channel=5")
    page.wait_for_selector("#channel:not([hidden])")
    loaded(page, "#channel-filter .grid-img")
    assert "RGB tile" in page.locator("#channel-filter").inner_text()
    size = page.locator("#channel-filter .grid-img").evaluate(
        "i => [i.naturalWidth, i.naturalHeight]"
    )
    assert size[0] == size[1] and size[0] >= 96  # one square colour tile, enlarged
    # No image in the link: the page is on the default sample, so the map and Grad-CAM show.
    page.wait_for_selector("#channel .cp-maps .panel-title:has-text('Feature map on cat')")
    page.wait_for_selector("#channel-cam .cam-img")

    page.goto(f"{api_url}/?layer=bn1&channel=3")
    page.wait_for_selector("#channel:not([hidden])")
    page.wait_for_function(
        "() => document.querySelector('#channel-filter').innerText.includes('no weights')"
    )
    assert "BatchNormAct2d" in page.locator("#channel-filter").inner_text()


def test_attribution_views(page, base_url, shoot):
    cat = images(base_url)["cat"]
    top = top_classes(base_url, cat)
    open_ui(page, base_url, f"?image={cat}&layer=blocks.3.0.conv_pw")
    page.wait_for_selector("#attribution:not([hidden])")
    settled(page, "#attribution")
    loaded(page, "#cam-panel .cam-top")
    loaded(page, "#saliency-panel .attr-img")
    assert top[0]["label"] in page.locator("#cam-panel").inner_text()

    # The class picker lists the top-5 predictions; picking one goes into the URL.
    options = page.locator("#attr-class option").all_inner_texts()
    assert [o.split(" · ")[0] for o in options] == [r["label"] for r in top]
    page.select_option("#attr-class", str(top[1]["index"]))
    page.wait_for_function(
        "(c) => new URL(location).searchParams.get('cls') === String(c)", arg=top[1]["index"]
    )
    settled(page, "#attribution")
    assert top[1]["label"] in page.locator("#cam-panel").inner_text()
    assert top[1]["label"] in page.locator("#saliency-panel").inner_text()

    page.select_option("#cam-method", "gradcampp")
    page.select_option("#saliency-method", "smoothgrad")
    page.wait_for_function(
        "() => { const q = new URL(location).searchParams;"
        " return q.get('cam') === 'gradcampp' && q.get('sal') === 'smoothgrad'; }"
    )
    settled(page, "#attribution")
    loaded(page, "#attribution img:not(.overlay-base)")
    page.fill("#cam-opacity", "80")
    page.wait_for_function("() => new URL(location).searchParams.get('alpha') === '0.8'")
    assert page.locator("#cam-panel .cam-top").evaluate("e => getComputedStyle(e).opacity") == "0.8"

    links = page.locator("#attribution a[download]")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert len(hrefs) == 4
    assert any("/cam?" in h and "format=npy" in h and "gradcampp" in h for h in hrefs)
    assert any("/saliency?" in h and "format=png" in h and "smoothgrad" in h for h in hrefs)
    page.locator("#attribution").scroll_into_view_if_needed()
    shoot(page, "attribution")

    # The permalink restores the same views.
    link = page.url
    page.goto(link)
    page.wait_for_selector("#attribution:not([hidden])")
    settled(page, "#attribution")
    assert page.locator("#cam-method").input_value() == "gradcampp"
    assert page.locator("#saliency-method").input_value() == "smoothgrad"
    assert page.locator("#attr-class").input_value() == str(top[1]["index"])


def test_slow_method_shows_loading_and_can_be_left(page, api_url):
    cat = images(api_url)["cat"]
    open_ui(page, api_url, f"?image={cat}")
    loaded(page, "#cam-panel .cam-top")
    page.select_option("#cam-method", "scorecam")
    page.wait_for_selector("#cam-panel[aria-busy='true'] .spinner:not([hidden])")
    assert "takes a while" in page.locator("#cam-panel").inner_text()
    page.select_option("#cam-method", "gradcam")  # drops the slow request
    settled(page, "#cam-panel")
    assert page.locator("#cam-panel [role='alert']").count() == 0


def test_attribution_error_is_inline(page, api_url, console):
    console.allow("Failed to load resource")
    cat = images(api_url)["cat"]
    open_ui(page, api_url, f"?image={cat}&cls=4000")
    alert = page.locator("#cam-panel [role='alert']")
    alert.wait_for()
    assert "class" in alert.inner_text().lower() and "{" not in alert.inner_text()
    page.locator("#saliency-panel [role='alert']").wait_for()
    assert all("Failed to load resource" in e for e in console.errors)


def test_channel_page_on_a_phone(new_page, api_url, shoot):
    page = new_page(390, 844)
    cat = images(api_url)["cat"]
    open_ui(page, api_url, f"?image={cat}&layer=blocks.2.0.conv_pw&channel=91")
    loaded(page, "#channel-cam .cam-img")
    loaded(page, "#channel-filter .grid-img")
    settled(page, "#attribution")
    overflow = page.evaluate("() => document.scrollingElement.scrollWidth - window.innerWidth")
    wide = page.evaluate(
        """() => [...document.querySelectorAll('body *')]
             .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
             .filter((e) => !e.closest('.thumbs'))
             .map((e) => `${e.tagName}.${e.className}#${e.id}`).slice(0, 5)"""
    )
    assert overflow <= 1, wide
    page.locator("#channel").scroll_into_view_if_needed()
    shoot(page, "channel-page-phone", full_page=True)


def test_new_controls_have_labels_and_keyboard(page, api_url):
    cat = images(api_url)["cat"]
    open_ui(page, api_url, f"?image={cat}&layer=blocks.2.0.conv_pw&channel=3&fvsteps=8&fvsize=32")
    settled(page, "#attribution")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('#channel *, #attribution *')]
             .filter((el) => el.matches('input, select, button, progress, [tabindex="0"]'))
             .filter((el) => el.offsetParent !== null)
             .filter((el) => !el.labels?.length && !el.getAttribute('aria-label'))
             .filter((el) => !el.textContent.trim())
             .map((el) => el.outerHTML.slice(0, 80))"""
    )
    assert unlabelled == []
    page.get_by_role("button", name="Visualise").focus()
    page.keyboard.press("Enter")
    fv_state(page, "done")


def test_new_state_keys_round_trip(page, api_url):
    open_ui(page, api_url, "")
    result = page.evaluate(
        """async () => {
          const s = await import('/js/state.js');
          const state = s.patch(s.parse(''), {
            image: 'abc', channel: 3, fv: 'better', fvsteps: 16, fvsize: 64,
            cam: 'scorecam', sal: 'guided', cls: 285, alpha: 0.25,
          });
          return { same: s.equal(state, s.parse(s.serialize(state))),
                   bad: s.parse('?fv=x&fvsteps=5000&fvsize=3&cam=y&sal=z&cls=-1&alpha=9'),
                   other: s.patch(state, { image: 'def' }) };
        }"""
    )
    assert result["same"]
    bad = result["bad"]
    assert (bad["fv"], bad["fvsteps"], bad["fvsize"]) == ("quick", None, None)
    assert (bad["cam"], bad["sal"], bad["cls"], bad["alpha"]) == ("gradcam", "vanilla", None, 1)
    assert result["other"]["cls"] is None  # another image has other top classes
