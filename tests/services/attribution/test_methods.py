"""CAMs agree with pytorch-grad-cam; saliency methods behave as their definitions say."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from convscope.errors import InvalidParameterError, UnknownLayerError
from convscope.render.overlay import heatmap_rgb, overlay
from convscope.services.attribution.methods import cam, saliency
from convscope.services.models.layers import default_cam_layer, trace_layers
from convscope.services.models.preprocess import standardize
from tests.conftest import hooks_left

EGYPTIAN_CAT, TABBY, ESPRESSO = 285, 281, 967
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
REFERENCE = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus}


@pytest.fixture(scope="module")
def cat(service, model, samples) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The cat sample as the network sees it: ``Tensor[3, 224, 224]`` in [0, 1]."""
    _, image = service.images.open(samples["cat"])
    return model.spec.preprocessing.view(image)


@pytest.fixture(scope="module")
def unfrozen(model) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    """A copy of the model with trainable parameters: pytorch-grad-cam backpropagates into
    them (and leaves their .grad behind), while the registry's model is frozen."""
    return copy.deepcopy(model.module).requires_grad_(True)


def _reference(
    module: torch.nn.Module,
    model,
    image: torch.Tensor,
    layer: str,
    method: str,  # type: ignore[no-untyped-def]
    index: int,
) -> np.ndarray:
    pre = model.spec.preprocessing
    x = standardize(image[None], pre.mean, pre.std)
    with REFERENCE.get(method, ScoreCAM)(module, [module.get_submodule(layer)]) as ref:
        return ref(input_tensor=x, targets=[ClassifierOutputTarget(index)])[0]


def test_default_layer_is_the_last_feature_map(model) -> None:  # type: ignore[no-untyped-def]
    # Read from the layer table traced at load: no forward pass, no hooks.
    assert model.cam_layer == "bn2"
    assert hooks_left(model.module) == 0


def test_default_layer_of_torchvision_and_plain_nets() -> None:
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=10).eval()
    assert default_cam_layer(trace_layers(net, (64, 64))) == "layer4"
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    assert default_cam_layer(trace_layers(flat, (8, 8))) is None


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
@pytest.mark.parametrize("layer", ["bn2", "blocks.5", "blocks.4.2"])
@pytest.mark.parametrize("class_index", [None, TABBY])
def test_cam_agrees_with_pytorch_grad_cam(model, unfrozen, cat, method, layer, class_index) -> None:  # type: ignore[no-untyped-def]
    pre = model.spec.preprocessing
    ours = cam(
        model.module, cat, pre.mean, pre.std, layer=layer, class_index=class_index, method=method
    )
    if class_index is None:
        assert ours.class_index in CATS  # the top-1 class of the cat photo is a cat
    ref = _reference(unfrozen, model, cat, layer, method, ours.class_index)
    assert ours.heatmap.shape == (224, 224) and ours.heatmap.dtype == torch.float32
    assert float(ours.heatmap.min()) >= 0.0 and float(ours.heatmap.max()) <= 1.0
    assert ours.cam.dim() == 2 and ours.cam.shape[0] < 224
    assert np.abs(ours.heatmap.numpy() - ref).max() < 1e-4
    assert hooks_left(model.module) == 0


def test_score_cam_agrees_with_pytorch_grad_cam(model, unfrozen, cat) -> None:  # type: ignore[no-untyped-def]
    pre = model.spec.preprocessing
    ours = cam(
        model.module,
        cat,
        pre.mean,
        pre.std,
        layer="blocks.2",
        method="scorecam",
        class_index=EGYPTIAN_CAT,
    )
    ref = _reference(unfrozen, model, cat, "blocks.2", "scorecam", EGYPTIAN_CAT)
    assert np.abs(ours.heatmap.numpy() - ref).max() < 1e-4


def test_cam_for_another_class_differs(model, cat) -> None:  # type: ignore[no-untyped-def]
    pre = model.spec.preprocessing
    a = cam(model.module, cat, pre.mean, pre.std, layer="bn2", class_index=EGYPTIAN_CAT)
    b = cam(model.module, cat, pre.mean, pre.std, layer="bn2", class_index=ESPRESSO)
    assert a.layer == "bn2" and b.class_index == ESPRESSO
    assert not torch.allclose(a.heatmap, b.heatmap, atol=0.05)


def test_cam_errors(model, cat) -> None:  # type: ignore[no-untyped-def]
    pre = model.spec.preprocessing
    with pytest.raises(UnknownLayerError):
        cam(model.module, cat, pre.mean, pre.std, layer="nope")
    with pytest.raises(InvalidParameterError, match="0 <= class_index < 1000"):
        cam(model.module, cat, pre.mean, pre.std, layer="bn2", class_index=1000)
    with pytest.raises(InvalidParameterError, match=r"spatial output.*\[1000\]"):
        cam(model.module, cat, pre.mean, pre.std, layer="classifier")
    assert hooks_left(model.module) == 0 and not model.module.training


def test_vanilla_gradient_matches_autograd(model, cat) -> None:  # type: ignore[no-untyped-def]
    pre = model.spec.preprocessing
    result = saliency(model.module, cat, pre.mean, pre.std, method="vanilla")
    leaf = cat[None].clone().requires_grad_(True)
    model.module(standardize(leaf, pre.mean, pre.std))[0, result.class_index].backward()
    torch.testing.assert_close(result.gradient, leaf.grad[0])
    torch.testing.assert_close(result.saliency, leaf.grad[0].abs().amax(0))
    assert result.class_index in CATS


def test_guided_backprop_changes_the_gradient_and_is_cleaned_up(model, cat) -> None:  # type: ignore[no-untyped-def]
    pre = model.spec.preprocessing
    vanilla = saliency(model.module, cat, pre.mean, pre.std, method="vanilla")
    guided = saliency(model.module, cat, pre.mean, pre.std, method="guided")
    assert guided.saliency.shape == (224, 224) and float(guided.saliency.min()) >= 0.0
    corr = np.corrcoef(guided.gradient.flatten().numpy(), vanilla.gradient.flatten().numpy())
    assert corr[0, 1] < 0.9  # a different map, not a rescaled copy
    # Hooks gone: a plain gradient afterwards equals the vanilla one again.
    again = saliency(model.module, cat, pre.mean, pre.std, method="vanilla")
    torch.testing.assert_close(again.gradient, vanilla.gradient)
    assert hooks_left(model.module) == 0


def test_guided_backprop_passes_only_positive_gradients_through_relus() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(3, 5, 1),
        torch.nn.ReLU6(inplace=True),
        torch.nn.Conv2d(5, 2, 1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    image = torch.rand(3, 2, 2)
    result = saliency(conv, image, (0.0,) * 3, (1.0,) * 3, method="guided", class_index=1)
    # By hand: grad_in = W1^T ([0 < pre < 6] * relu(d score / d relu output)).
    w1, b1, w2 = conv[0].weight[:, :, 0, 0], conv[0].bias, conv[2].weight[1, :, 0, 0]
    pre = torch.einsum("oc,chw->ohw", w1, image) + b1.view(-1, 1, 1)
    grad_out = (w2 / 4).view(-1, 1, 1).expand_as(pre)
    grad_pre = ((pre > 0) & (pre < 6)) * grad_out.clamp(min=0)
    expected = torch.einsum("oc,ohw->chw", w1, grad_pre).detach()
    torch.testing.assert_close(result.gradient, expected)
    assert hooks_left(conv) == 0


def test_smoothgrad_is_seeded(model, cat) -> None:  # type: ignore[no-untyped-def]
    pre = model.spec.preprocessing
    small = torch.nn.functional.interpolate(cat[None], size=(96, 96), mode="bilinear")[0]
    a = saliency(model.module, small, pre.mean, pre.std, method="smoothgrad", samples=4, seed=1)
    b = saliency(model.module, small, pre.mean, pre.std, method="smoothgrad", samples=4, seed=1)
    c = saliency(model.module, small, pre.mean, pre.std, method="smoothgrad", samples=4, seed=2)
    v = saliency(model.module, small, pre.mean, pre.std, method="vanilla")
    assert torch.equal(a.gradient, b.gradient) and not torch.equal(a.gradient, c.gradient)
    assert not torch.allclose(a.gradient, v.gradient)
    with pytest.raises(InvalidParameterError, match="samples <= 128"):
        saliency(model.module, small, pre.mean, pre.std, method="smoothgrad", samples=1000)


def test_overlay_blends_the_colour_map() -> None:
    image = np.full((4, 5, 3), 100, np.uint8)
    heat = np.linspace(0, 1, 20).reshape(4, 5)
    out = overlay(image, heat, alpha=0.25, cmap="viridis")
    expected = np.rint(0.75 * 100 + 0.25 * heatmap_rgb(heat, "viridis").astype(np.float32))
    assert out.dtype == np.uint8 and np.array_equal(out, expected.astype(np.uint8))
