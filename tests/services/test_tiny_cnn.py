"""The fast tier (``scripts/test --quick``): the core mechanisms on a tiny seeded CNN.

No pretrained model is loaded: a four-layer CNN with fixed random weights exercises the hook
primitive, capture, the traced layer table, the default CAM layer, filters and Grad-CAM,
each checked against an independent reference.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from convscope.render import encode
from convscope.services.attribution.methods import cam
from convscope.services.inspection.capture import capture
from convscope.services.inspection.drawing import GridBounds
from convscope.services.inspection.filters import FilterGrid, FilterView, render_filters
from convscope.services.inspection.maps import MapView, feature_maps, render_maps
from convscope.services.models.hooks import HookScope, LayerTap
from convscope.services.models.layers import default_cam_layer, trace_layers
from convscope.services.models.preprocess import Preprocessing
from convscope.services.models.registry import LoadedModel
from convscope.services.models.sources import ModelSpec
from tests.conftest import hooks_left

pytestmark = pytest.mark.quick

SIZE = 32


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),  # in place: the capture must still return the BN output
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    with torch.no_grad():  # non-trivial batch-norm statistics
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    net = tiny_cnn()
    spec = ModelSpec(
        name="tiny",
        title="tiny",
        source="user",
        build=tiny_cnn,
        preprocessing=Preprocessing(crop_size=SIZE, resize_size=SIZE),
        categories=[f"class{i}" for i in range(5)],
        weights="seed0",
    )
    return LoadedModel(spec, net, trace_layers(net, (SIZE, SIZE)), torch.device("cpu"), 0.0)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_layer_table_in_call_order_with_shapes(tiny: LoadedModel) -> None:
    names = [info.name for info in tiny.layers]
    assert names == [str(i) for i in range(9)] + ["output"]
    assert tiny.layer("0").output_shape == [8, SIZE, SIZE]
    assert tiny.layer("3").output_shape == [8, SIZE // 2, SIZE // 2]
    assert tiny.layer("8").output_shape == [5]
    assert tiny.layer("0").has_filters and not tiny.layer("2").has_filters
    assert default_cam_layer(tiny.layers) == "5"  # last spatial output before pooling
    assert hooks_left(tiny.module) == 0


def test_capture_equals_feature_extractor(tiny: LoadedModel, x: torch.Tensor) -> None:
    cap = capture(tiny, x)
    plain = tiny_cnn()
    plain[2].inplace = False  # the reference must not overwrite the BN output itself
    reference = create_feature_extractor(plain, ["1", "2", "4", "5", "8"])(x[None])
    for name in ("1", "2", "4", "5"):
        assert torch.equal(feature_maps(tiny, cap, name), reference[name][0])
    assert torch.allclose(cap.logits, reference["8"][0])
    # The in-place ReLU overwrote the BN output during the forward: the capture kept a copy.
    assert (cap.maps["1"] < 0).any() and not (cap.maps["2"] < 0).any()
    assert hooks_left(tiny.module) == 0


def test_hook_scope_ignores_other_threads_and_cleans_up(tiny: LoadedModel) -> None:
    seen: list[int] = []
    other_ready, release = threading.Event(), threading.Event()

    def other_thread_forward() -> None:
        other_ready.set()
        release.wait(5)
        with torch.no_grad():
            tiny.module(torch.zeros(1, 3, SIZE, SIZE))

    other = threading.Thread(target=other_thread_forward)
    other.start()
    with HookScope() as hooks:
        hooks.forward(tiny.module[0], lambda _m, _i, out: seen.append(out.shape[1]))
        assert hooks.count == 1 and hooks_left(tiny.module) == 1
        assert other_ready.wait(5)
        release.set()
        other.join(5)  # the other thread's forward ran while the hook was installed
        assert seen == []
        with torch.no_grad():
            tiny.module(torch.zeros(1, 3, SIZE, SIZE))
        assert seen == [8]
    assert hooks_left(tiny.module) == 0


def test_layer_tap_keeps_the_graph_and_stops_early(tiny: LoadedModel, x: torch.Tensor) -> None:
    with LayerTap(tiny.module, ["4"], "tiny") as tap:
        outputs, logits = tap.run(x[None].requires_grad_(True))
    assert logits is None  # stopped after layer 4
    assert outputs["4"].requires_grad
    assert hooks_left(tiny.module) == 0


def test_filters_npy_and_png(tiny: LoadedModel) -> None:
    bounds = GridBounds(max_scale=32, max_grid_pixels=10_000_000, max_json_floats=1_000_000)
    npy = render_filters(tiny, "0", "npy", FilterView(), FilterGrid(), bounds)
    assert npy.content == encode.npy(tiny.module[0].weight.detach())
    png = render_filters(tiny, "0", "png", FilterView(), FilterGrid(scale=2), bounds)
    assert png.media_type == "image/png" and png.headers["X-Convscope-Mode"] == "rgb"
    assert png.headers["X-Convscope-Channels"] == ",".join(map(str, range(8)))


def test_maps_render_selection(tiny: LoadedModel, x: torch.Tensor) -> None:
    bounds = GridBounds(max_scale=32, max_grid_pixels=10_000_000, max_json_floats=1_000_000)
    maps = feature_maps(tiny, capture(tiny, x), "4")
    out = render_maps(maps, "4", "npy", MapView(channels="3,1"), bounds)
    assert out.headers["X-Convscope-Channels"] == "3,1"
    assert out.content == encode.npy(maps[[3, 1]])


def test_gradcam_equals_its_definition(tiny: LoadedModel) -> None:
    image = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    result = cam(tiny.module, image, (0.0,) * 3, (1.0,) * 3, layer="5", class_index=3)
    # Independent: split the net at layer 5 and differentiate by hand.
    head, tail = tiny.module[:6], tiny.module[6:]
    act = head(image[None]).detach().requires_grad_(True)
    tail(act)[0, 3].backward()
    assert act.grad is not None
    weights = act.grad[0].mean(dim=(1, 2))
    raw = torch.relu((weights.view(-1, 1, 1) * act.detach()[0]).sum(0))
    assert torch.allclose(result.cam, raw, atol=1e-6)
    up = F.interpolate(
        ((raw - raw.min()) / (raw.max() - raw.min() + 1e-7))[None, None],
        size=(SIZE, SIZE),
        mode="bilinear",
        align_corners=False,
    )[0, 0]
    expected = (up - up.min()) / (up.max() - up.min() + 1e-7)
    assert torch.allclose(result.heatmap, expected, atol=1e-5)
    assert hooks_left(tiny.module) == 0
