"""Regenerate the README screenshots (docs/screenshots/*.png) from the real UI.

    .venv/bin/python scripts/readme_screenshots.py [--only NAME ...] [--out DIR]

Starts a throwaway server on 127.0.0.1 (bench.server.running_server, the one server-start
helper), drives Debian's Chromium headless with Playwright, and writes one PNG per view at a
desktop width and the first screen at a phone width. Look at them before committing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `bench` lives at the repository root

from bench.server import running_server  # noqa: E402

log = logging.getLogger("readme_screenshots")

CHROMIUM = "/usr/bin/chromium"
DOCS = REPO / "docs" / "screenshots"
# Nothing is loading and every picture on screen has arrived.
SETTLED = """() => !document.querySelector("[aria-busy='true']") &&
  [...document.querySelectorAll('img')].filter((i) => i.offsetParent && i.getAttribute('src'))
    .every((i) => i.complete && i.naturalWidth > 0)"""


@dataclass(frozen=True)
class Shot:
    name: str
    search: Callable[[dict[str, str]], str]  # image name -> id, to the URL's query string
    width: int = 1280
    height: int = 800
    scroll_to: str | None = None
    full_page: bool = False
    before: Callable[[object], None] | None = None
    element: str | None = None  # a picture of this element alone (the top bar unpinned)


def visualise(page) -> None:
    page.get_by_role("button", name="Visualise").click()
    page.wait_for_selector("#channel-fv[data-state='done']", timeout=180_000)


def open_example(page) -> None:
    """The unit page's dataset examples: the best one opened (whole image, box, overlay)."""
    visualise(page)
    page.wait_for_selector("#channel-examples .example-tile")
    page.locator("#channel-examples .example-tile").first.click()
    page.wait_for_selector("#channel-examples .examples-detail img")


UNIT_LAYER = "blocks.2.0.conv_pwl"


SHOTS = (
    Shot("main", lambda i: ""),  # the first screen of a bare URL
    Shot("phone", lambda i: "", width=390, height=844, full_page=False),
    Shot(
        "channel",
        lambda i: (
            f"?layer=blocks.2.0.conv_pw&image={i['cat']}&order=mean&channel=91&colormap=inferno"
        ),
        scroll_to="#channel",
    ),
    Shot(
        "compare",
        lambda i: (
            f"?layer=blocks.3.0.conv_pw&image={i['cat']}&compare={i['coffee']}&order=mean&limit=32"
        ),
        scroll_to="#compare",
    ),
    Shot(
        "channel_page",
        lambda i: f"?layer=blocks.4.0.conv_pw&image={i['cat']}&channel=10",
        scroll_to="#channel",
        before=visualise,
    ),
    Shot(
        "unit_page",
        lambda i: f"?layer={UNIT_LAYER}&image={i['cat']}&channel=3&coll={i['builtin']}",
        before=open_example,
        element="#channel",
    ),
    Shot(
        "attribution",
        lambda i: f"?layer=blocks.3.0.conv_pw&image={i['cat']}",
        scroll_to="#attribution",
    ),
)


def _call(url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        found: dict[str, object] = json.load(response)
        return found


def index_builtin(base: str) -> str:
    """Index the built-in collection (real photos) for the unit page's layer; its id."""
    with urllib.request.urlopen(f"{base}/api/collections") as response:
        cid = next(c["id"] for c in json.load(response) if c["name"] == "built-in photos")
    job = _call(
        f"{base}/api/models/efficientnet_lite0/collections/{cid}/index",
        {"layers": [UNIT_LAYER], "k": 9},
    )
    while job["state"] not in ("done", "failed", "cancelled"):
        time.sleep(1)
        job = _call(f"{base}/api/jobs/{job['id']}")
    if job["state"] != "done":
        raise RuntimeError(f"indexing the built-in collection: {job}")
    return str(cid)


def image_ids(base: str) -> dict[str, str]:
    with urllib.request.urlopen(f"{base}/api/images") as response:
        return {i["name"]: i["id"] for i in json.load(response)}


def take(browser, base: str, ids: dict[str, str], shot: Shot, out: Path) -> Path:
    context = browser.new_context(viewport={"width": shot.width, "height": shot.height})
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{base}/{shot.search(ids)}")  # the default model: efficientnet_lite0
        page.wait_for_selector("#layer-list li[aria-selected='true']")
        page.wait_for_function(SETTLED)
        if shot.before:
            shot.before(page)
            page.wait_for_function(SETTLED)
        page.wait_for_timeout(300)
        if shot.scroll_to:
            page.locator(shot.scroll_to).evaluate(
                "(e) => window.scrollTo(0, e.getBoundingClientRect().top + scrollY - 60)"
            )
            page.wait_for_timeout(200)
        page.mouse.move(0, shot.height - 1)
        path = out / f"{shot.name}.png"
        if shot.element:
            page.evaluate("document.querySelector('.topbar').style.position = 'static'")
            page.locator(shot.element).screenshot(path=str(path))
        else:
            page.screenshot(path=str(path), full_page=shot.full_page)
        return path
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="*", choices=[s.name for s in SHOTS], help="these shots only"
    )
    parser.add_argument("--out", type=Path, default=DOCS, help=f"folder (default: {DOCS})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not every readiness poll
    if not Path(CHROMIUM).exists():
        log.error("%s is not installed (apt-get install chromium)", CHROMIUM)
        return 1
    from playwright.sync_api import sync_playwright

    shots = [s for s in SHOTS if not args.only or s.name in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    with running_server() as server, sync_playwright() as playwright:
        ids = image_ids(server.url)
        if any(shot.name == "unit_page" for shot in shots):
            ids["builtin"] = index_builtin(server.url)
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            for shot in shots:
                log.info("%s", take(browser, server.url, ids, shot, args.out))
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
