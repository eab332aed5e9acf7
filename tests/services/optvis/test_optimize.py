"""Feature visualisation: it maximises what it is asked to, deterministically and cleanly."""

from __future__ import annotations

import threading

import pytest
import torch

from convscope.errors import CancelledError, InvalidParameterError, UnknownLayerError
from convscope.render.overlay import images_png
from convscope.services.models.preprocess import standardize
from convscope.services.optvis.objectives import Objective, parse_objective
from convscope.services.optvis.optimize import (
    DreamSettings,
    Limits,
    OptimizeSettings,
    deepdream,
    optimize_images,
)
from convscope.services.optvis.param import image_param
from convscope.services.optvis.transforms import TransformSettings, random_transform
from tests.conftest import hooks_left

LAYER = "blocks.2.1.conv_pwl"  # 40 channels at 1/8 resolution: quick to reach
FAST = OptimizeSettings(steps=12, size=64, lr=0.05, seed=3)


@pytest.fixture(scope="module")
def net(model):  # type: ignore[no-untyped-def]
    pre = model.spec.preprocessing
    return model.module, pre.mean, pre.std


def channel_means(net, images: torch.Tensor, layer: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``Tensor[N, C]``: each image's per-channel mean of ``layer`` (plain hooked forward)."""
    module, mean, std = net
    seen: list[torch.Tensor] = []
    handle = module.get_submodule(layer).register_forward_hook(
        lambda _m, _i, o: seen.append(o.detach().clone())
    )
    try:
        with torch.no_grad():
            module(standardize(images, mean, std))
    finally:
        handle.remove()
    return seen[0].mean(dim=(2, 3))


def start_images(count: int, settings: OptimizeSettings) -> torch.Tensor:
    """The random images an optimisation with ``settings`` starts from."""
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        return image_param(count, settings.size, generator=generator)()


def test_same_seed_same_bytes_other_seed_other_image(net) -> None:  # type: ignore[no-untyped-def]
    objectives = [Objective.channel(LAYER, 7)]
    a = optimize_images(net[0], objectives, net[1], net[2], FAST)
    b = optimize_images(net[0], objectives, net[1], net[2], FAST)
    c = optimize_images(
        net[0],
        objectives,
        net[1],
        net[2],
        OptimizeSettings(steps=FAST.steps, size=FAST.size, seed=FAST.seed + 1),
    )
    assert a.shape == (1, 3, 64, 64) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert images_png(a) == images_png(b)
    assert not torch.equal(a, c)


def test_channel_objective_raises_its_channel(net) -> None:  # type: ignore[no-untyped-def]
    image = optimize_images(net[0], [Objective.channel(LAYER, 7)], net[1], net[2], FAST)
    before = channel_means(net, start_images(1, FAST), LAYER)[0, 7]
    after = channel_means(net, image, LAYER)[0, 7]
    assert after > before + 1.0


def test_a_batch_optimises_each_image_for_its_own_channel(net) -> None:  # type: ignore[no-untyped-def]
    channels = [3, 7, 11]
    settings = OptimizeSettings(steps=20, size=64, seed=0)
    images = optimize_images(
        net[0], [Objective.channel(LAYER, c) for c in channels], net[1], net[2], settings
    )
    acts = channel_means(net, images, LAYER)[:, channels]  # [image, target channel]
    assert images.shape == (3, 3, 64, 64)
    # Each channel is highest in the image made for it.
    assert torch.equal(acts.argmax(dim=0), torch.arange(3))


def test_negative_objective_lowers_the_channel(net) -> None:  # type: ignore[no-untyped-def]
    image = optimize_images(net[0], [-Objective.channel(LAYER, 7)], net[1], net[2], FAST)
    before = channel_means(net, start_images(1, FAST), LAYER)[0, 7]
    after = channel_means(net, image, LAYER)[0, 7]
    assert after < before - 1.0


def test_weighted_sum_raises_one_and_lowers_the_other(net) -> None:  # type: ignore[no-untyped-def]
    objective = parse_objective(f"{LAYER}:7 - 0.5*{LAYER}:11")
    assert objective == Objective.channel(LAYER, 7) + (-0.5) * Objective.channel(LAYER, 11)
    image = optimize_images(net[0], [objective], net[1], net[2], FAST)
    before = channel_means(net, start_images(1, FAST), LAYER)[0]
    after = channel_means(net, image, LAYER)[0]
    assert after[7] > before[7] and after[11] < before[11]


def test_neuron_and_layer_objectives_run(net) -> None:  # type: ignore[no-untyped-def]
    objectives = [Objective.neuron(LAYER, 7), Objective.layer("blocks.1")]
    images = optimize_images(net[0], objectives, net[1], net[2], FAST)
    assert images.shape == (2, 3, 64, 64)


@pytest.mark.parametrize(
    ("objective", "opts", "error", "words"),
    [
        (Objective.channel("blocks.99", 0), FAST, UnknownLayerError, ["blocks.99", "/layers"]),
        (
            Objective.channel(LAYER, 40),
            FAST,
            InvalidParameterError,
            ["40 channels", "0 <= channel < 40", "got 40"],
        ),
        (
            Objective.channel(LAYER, 0),
            OptimizeSettings(steps=0),
            InvalidParameterError,
            ["steps", "0 < steps <= 2048", "got 0"],
        ),
        (
            Objective.channel(LAYER, 0),
            OptimizeSettings(size=4096),
            InvalidParameterError,
            ["size", "size <= 512", "got 4096"],
        ),
    ],
)
def test_bad_requests_raise_domain_errors_naming_valid_values(  # type: ignore[no-untyped-def]
    net, objective, opts, error, words
) -> None:
    with pytest.raises(error) as caught:
        optimize_images(net[0], [objective], net[1], net[2], opts, model_name="lite0")
    for word in words:
        assert word in caught.value.detail
    assert hooks_left(net[0]) == 0


def test_parse_objective_rejects_garbage_with_the_accepted_forms() -> None:
    with pytest.raises(InvalidParameterError) as caught:
        parse_objective("blocks.4:ten")
    assert caught.value.code == "invalid_parameter" and "blocks.4:10" in caught.value.detail
    assert parse_objective("layer(blocks.3) + -2*neuron(conv_head:5)").describe() == (
        "layer(blocks.3) + -2*neuron(conv_head:5)"
    )


def test_model_is_left_untouched_after_success_and_after_an_error(net) -> None:  # type: ignore[no-untyped-def]
    module = net[0]
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flags = [p.requires_grad for p in module.parameters()]
    seen: list[tuple[int, int, bool]] = []

    def progress(step: int, total: int, preview: torch.Tensor | None) -> None:
        seen.append((step, total, preview is not None))

    settings = OptimizeSettings(steps=4, size=64, preview_every=2)
    optimize_images(
        module, [Objective.channel(LAYER, 1)], net[1], net[2], settings, progress=progress
    )
    assert seen == [(1, 4, False), (2, 4, True), (3, 4, False), (4, 4, True)]

    def explode(step: int, total: int, preview: torch.Tensor | None) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        optimize_images(
            module, [Objective.channel(LAYER, 1)], net[1], net[2], settings, progress=explode
        )
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        optimize_images(
            module, [Objective.channel(LAYER, 1)], net[1], net[2], settings, cancel=cancel
        )
    assert hooks_left(module) == 0
    assert not module.training
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(p.grad is None for p in module.parameters())
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_identity_transform_is_identity() -> None:
    images = torch.rand(2, 3, 20, 24)
    still = TransformSettings(pad=0, jitter=0, scales=(1.0,), angles=(0.0,), jitter_after=0)
    out = random_transform(images, still, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_deepdream_raises_the_layer_norm_and_keeps_the_input(net) -> None:  # type: ignore[no-untyped-def]
    image = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))
    original = image.clone()
    settings = DreamSettings(steps=5, octaves=2, lr=0.02, seed=1)
    dream = deepdream(net[0], image, "blocks.3", net[1], net[2], settings)
    again = deepdream(net[0], image, "blocks.3", net[1], net[2], settings)
    assert torch.equal(image, original)
    assert dream.shape == image.shape and torch.equal(dream, again)

    def l2(x: torch.Tensor) -> float:
        seen: list[torch.Tensor] = []
        h = net[0].get_submodule("blocks.3").register_forward_hook(lambda _m, _i, o: seen.append(o))
        try:
            with torch.no_grad():
                net[0](standardize(x[None], net[1], net[2]))
        finally:
            h.remove()
        return float(seen[0].square().mean())

    assert l2(dream) > 1.5 * l2(image)
    assert hooks_left(net[0]) == 0


def test_limits_bound_the_batch(net) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameterError, match="1 to 2 objectives"):
        optimize_images(
            net[0],
            [Objective.channel(LAYER, i) for i in range(3)],
            net[1],
            net[2],
            FAST,
            limits=Limits(max_batch=2),
        )
