"""Captured activations against independent references, and capture hygiene."""

import threading

import pytest
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from convscope.errors import NoActivationError, UnknownLayerError
from convscope.services.facade import Convscope
from convscope.services.inspection.capture import capture, layer_output
from convscope.services.inspection.maps import feature_maps
from convscope.services.models.hooks import eval_mode
from convscope.services.models.registry import LoadedModel
from tests.conftest import DEFAULT, hooks_left

LAYERS = [
    "conv_stem",
    "bn1",
    "blocks.0.0.conv_dw",
    "blocks.2.1.conv_pwl",
    "blocks.4",
    "conv_head",
    "global_pool",
    "output",
]


def _input(service: Convscope, model: LoadedModel, image_id: str) -> torch.Tensor:
    _, image = service.images.open(image_id)
    return model.spec.preprocessing(image)


def test_captured_maps_equal_a_plain_hooked_forward(service: Convscope, model, samples) -> None:
    x = _input(service, model, samples["cat"])
    cap = capture(model, x)
    module = model.module
    for layer in LAYERS:
        target = module if layer == "output" else module.get_submodule(layer)
        seen: list[torch.Tensor] = []
        handle = target.register_forward_hook(lambda _m, _i, o, seen=seen: seen.append(o.clone()))
        try:
            with torch.no_grad():
                module(x[None])
        finally:
            handle.remove()
        assert torch.equal(cap.maps[layer], seen[-1][0]), layer
    assert torch.equal(cap.logits, cap.maps["output"])


def test_captured_maps_equal_torchvision_feature_extractor(service: Convscope, samples) -> None:
    """resnet-style model built by torchvision: compare with create_feature_extractor."""
    from convscope.config import Settings
    from convscope.services.models.registry import ModelRegistry

    registry = ModelRegistry(Settings(data_dir=service.settings.data_dir, untrained_models=True))
    model = registry.get("resnet18-untrained")
    x = _input(service, model, samples["coffee"])
    nodes = {
        "conv1": "conv1",
        "layer1.0.conv1": "l1c1",
        "layer2": "layer2",
        "avgpool": "pool",
        "fc": "fc",
    }
    extractor = create_feature_extractor(model.module, return_nodes=nodes)
    with torch.no_grad():
        expected = extractor(x[None])
    cap = capture(model, x, layers=list(nodes))
    for layer, key in nodes.items():
        assert torch.allclose(cap.maps[layer], expected[key][0], atol=1e-6), layer


def test_inplace_relu_does_not_overwrite_the_conv_output(service: Convscope, samples) -> None:
    from convscope.config import Settings
    from convscope.services.models.registry import ModelRegistry

    registry = ModelRegistry(Settings(data_dir=service.settings.data_dir, untrained_models=True))
    model = registry.get("alexnet-untrained")
    assert isinstance(model.module.features[1], nn.ReLU) and model.module.features[1].inplace
    x = _input(service, model, samples["cat"])
    cap = capture(model, x, layers=["features.0", "features.1"])
    conv = torch.nn.functional.conv2d(
        x[None],
        model.module.features[0].weight,
        model.module.features[0].bias,
        stride=4,
        padding=2,
    )[0]
    assert torch.allclose(cap.maps["features.0"], conv, atol=1e-5)
    assert cap.maps["features.0"].min() < 0  # pre-ReLU values survived the in-place ReLU
    assert torch.equal(cap.maps["features.1"], conv.clamp_min(0)) or torch.allclose(
        cap.maps["features.1"], conv.clamp_min(0), atol=1e-5
    )


def test_no_hooks_left_after_success_or_exception(model, service: Convscope, samples) -> None:
    x = _input(service, model, samples["cat"])
    capture(model, x)
    assert hooks_left(model.module) == 0
    with pytest.raises(RuntimeError):
        capture(model, torch.zeros(5, 7, 7))  # wrong channel count: fails inside the forward
    assert hooks_left(model.module) == 0
    assert not model.module.training
    assert not model.lock.locked()


def test_one_forward_pass_per_image_then_layer_switches_are_free(
    service: Convscope, model, samples
) -> None:
    calls = []
    handle = model.module.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        service.inspector.captures.clear()
        service.inspector.rendered.clear()
        from convscope.services.facade import MapView

        for layer in ["conv_stem", "blocks.1", "blocks.3.0.conv_pw", "conv_head"]:
            service.activations(DEFAULT, samples["rocket"], layer, "png", MapView())
        service.channel_stats(DEFAULT, samples["rocket"], "blocks.5", 3)
        service.predictions(DEFAULT, samples["rocket"], 5)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_concurrent_requests_on_different_layers_see_their_own_maps(
    service: Convscope, model, samples
) -> None:
    ids = [samples["cat"], samples["coffee"], samples["rocket"], samples["astronaut"]]
    expected = {i: capture(model, _input(service, model, i)) for i in ids}
    layers = ["conv_stem", "blocks.1.0.conv_pw", "blocks.3", "conv_head"]
    errors: list[str] = []

    def work(k: int) -> None:
        image_id, layer = ids[k % 4], layers[(k // 4) % 4]
        got = capture(model, _input(service, model, image_id), layers=[layer])
        if not torch.equal(got.maps[layer], expected[image_id].maps[layer]):
            errors.append(f"{image_id[:6]} {layer}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert hooks_left(model.module) == 0


def test_layers_are_in_forward_order_with_shapes(model) -> None:
    names = [layer.name for layer in model.layers]
    assert names[0] == "conv_stem" and names[-1] == "output"
    assert names.index("blocks.0") < names.index("blocks.0.0.conv_dw") < names.index("blocks.1")
    assert names.index("blocks.6") < names.index("conv_head") < names.index("classifier")
    stem = model.layer("conv_stem")
    assert stem.output_shape == [32, 112, 112] and stem.params == {"weight": [32, 3, 3, 3]}
    assert stem.has_filters and not model.layer("bn1").has_filters
    assert model.layer("classifier").output_shape == [1000]
    assert len(names) == len(set(names)) == len(list(model.module.named_modules()))


def test_feature_map_errors(service: Convscope, model, samples) -> None:
    with pytest.raises(UnknownLayerError, match="/api/models/efficientnet_lite0/layers"):
        service.channel_stats(DEFAULT, samples["cat"], "blocks.99", 3)
    cap = service.inspector.capture(model, samples["cat"])
    assert feature_maps(model, cap, "classifier").shape == (1000, 1, 1)
    with pytest.raises(NoActivationError):
        feature_maps(model, cap.__class__({}, cap.logits, 0), "blocks.1")


def test_eval_mode_restores_training_and_leaves_eval_modules_alone() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert all(m.training for m in net.modules())
    net.eval()
    walks: list[bool] = []
    net.train = lambda mode=True: walks.append(mode)  # type: ignore[method-assign,assignment]
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert walks == []  # an eval module (every served model) is not walked twice per forward


def test_capture_keeps_a_served_model_in_eval_mode(service: Convscope, model, samples) -> None:
    capture(model, _input(service, model, samples["cat"]))
    assert not any(m.training for m in model.module.modules())


def test_one_layer_output_equals_the_full_capture(model, service: Convscope, samples) -> None:
    """The one-shot path (hook one module, stop there, no lock) returns what capture keeps."""
    x = _input(service, model, samples["cat"])
    full = capture(model, x)
    checked = 0
    for info in model.layers:
        if info.output_shape is None or info.index % 7:  # every 7th module: all depths, fast
            continue
        one = layer_output(model, x, info.name)
        assert one is not None, info.name
        assert torch.equal(one, full.maps[info.name]), info.name
        checked += 1
    assert checked > 30
    assert layer_output(model, x, "output") is not None  # the root: falls back to capture
    assert hooks_left(model.module) == 0


def test_one_layer_output_survives_an_inplace_relu(service: Convscope, samples) -> None:
    from convscope.config import Settings
    from convscope.services.models.registry import ModelRegistry

    registry = ModelRegistry(Settings(data_dir=service.settings.data_dir, untrained_models=True))
    model = registry.get("alexnet-untrained")
    x = _input(service, model, samples["cat"])
    conv = layer_output(model, x, "features.0")
    assert conv is not None and conv.min() < 0  # stopped before the in-place ReLU ran
    assert torch.equal(conv, capture(model, x, layers=["features.0"]).maps["features.0"])
