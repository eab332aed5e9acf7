"""Regenerate the README screenshots (docs/screenshots/*.png) from the real UI.

Skipped unless CONVSCOPE_UPDATE_SCREENSHOTS=1, so a normal test run never rewrites committed
files:  CONVSCOPE_UPDATE_SCREENSHOTS=1 pytest tests/web/test_readme_screenshots.py
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.web,
    pytest.mark.skipif(
        os.environ.get("CONVSCOPE_UPDATE_SCREENSHOTS") != "1",
        reason="set CONVSCOPE_UPDATE_SCREENSHOTS=1 to rewrite docs/screenshots",
    ),
]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SETTLED = """() => !document.querySelector("[aria-busy='true']") &&
  [...document.querySelectorAll('img')].filter((i) => i.offsetParent)
    .every((i) => i.complete && i.naturalWidth > 0)"""


def ids(base: str) -> dict[str, str]:
    with urllib.request.urlopen(f"{base}/api/images") as response:
        return {i["name"]: i["id"] for i in json.load(response)}


def snap(page, url: str, name: str, scroll_to: str | None = None, before=None) -> None:
    page.goto(url)
    page.wait_for_selector("#layer-list li[aria-selected='true']")
    page.wait_for_function(SETTLED)
    if before:
        before(page)
        page.wait_for_function(SETTLED)
    page.wait_for_timeout(300)
    if scroll_to:
        page.locator(scroll_to).evaluate(
            "(e) => window.scrollTo(0, e.getBoundingClientRect().top + scrollY - 60)"
        )
        page.wait_for_timeout(200)
    DOCS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(0, 799)
    page.screenshot(path=str(DOCS / f"{name}.png"))


def test_readme_screenshots(page, api_url):
    image = ids(api_url)
    base = f"{api_url}/?model=efficientnet_lite0"
    snap(page, f"{base}&layer=blocks.1.0.conv_pw&image={image['cat']}&limit=32", "main")
    snap(
        page,
        f"{base}&layer=blocks.2.0.conv_pw&image={image['cat']}&order=mean&channel=91&colormap=inferno",
        "channel",
        "#channel",
    )
    snap(
        page,
        f"{base}&layer=blocks.3.0.conv_pw&image={image['cat']}&compare={image['coffee']}&order=mean&limit=32",
        "compare",
        "#compare",
    )


def visualise(page) -> None:
    page.get_by_role("button", name="Visualise").click()
    page.wait_for_selector("#channel-fv[data-state='done']", timeout=120_000)


def test_readme_screenshots_explain(page, api_url):
    image = ids(api_url)
    base = f"{api_url}/?model=efficientnet_lite0&image={image['cat']}"
    snap(page, f"{base}&layer=blocks.4.0.conv_pw&channel=10", "channel_page", "#channel", visualise)
    snap(page, f"{base}&layer=blocks.3.0.conv_pw", "attribution", "#attribution")
