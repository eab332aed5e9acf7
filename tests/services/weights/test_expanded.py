"""Expanded weights against references that do not use the service's mechanism.

- a hand-built conv -> BN -> ReLU -> conv net: the kernel composed by hand (loops);
- the default model: a copy with its activations swapped for ``nn.Identity`` (module
  replacement, not hooks), probed with a random input: in the linearised network
  ``L(v) - L(0) = <expanded weights, v>``, no autograd involved;
- residual blocks keep their skip path.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from convscope.errors import InvalidParameterError
from convscope.services.weights.expanded import expanded_weights, support_box
from convscope.services.weights.linearize import ACTIVATIONS
from tests.conftest import hooks_left

DTYPE = torch.float64  # the reference network: float32 loses the 1e-4 it is checked to


def test_two_convs_with_batch_norm_compose_into_the_hand_composed_kernel() -> None:
    torch.manual_seed(0)
    conv1, bn, conv2 = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    net = nn.Sequential(conv1, bn, nn.ReLU(inplace=True), conv2).eval().requires_grad_(False)
    x = torch.randn(1, 3, 9, 9)
    result = expanded_weights(net, "3", 2, "input", x, "tiny")

    # By hand: the BN scales mid channel m by g_m; conv2 after conv1 (both cross-correlations)
    # is one cross-correlation whose kernel is the full convolution of the two kernels.
    w1 = conv1.weight.double().numpy()
    w2 = conv2.weight.double().numpy()
    g = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).double().numpy()
    expected = np.zeros((3, 5, 5))
    for i in range(3):
        for m in range(4):
            for u in range(3):
                for v in range(3):
                    for p in range(3):
                        for q in range(3):
                            expected[i, u + p, v + q] += g[m] * w1[m, i, u, v] * w2[2, m, p, q]
    assert result.box == (2, 2, 7, 7)  # output 5x5, centre (2, 2) -> input rows 2..6
    assert result.position == (2, 2)
    np.testing.assert_allclose(result.values.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert hooks_left(net) == 0


def test_a_residual_block_includes_its_skip_path() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.act(self.conv(x))
            out += x  # in place on the branch output, as torchvision's ResNet does
            return out

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), Residual()).eval().requires_grad_(False)
    result = expanded_weights(net, "1", 3, "0", torch.zeros(1, 3, 7, 7), "tiny")
    expected = net[1].conv.weight[3].clone()
    expected[3, 1, 1] += 1.0  # the skip path: channel 3 at the centre, weight one
    assert result.box == (2, 2, 5, 5)
    torch.testing.assert_close(result.values, expected)


def _reference_copy(module: nn.Module) -> nn.Module:
    """A copy with every activation module replaced by ``nn.Identity``."""
    ref = copy.deepcopy(module).to(DTYPE)
    for name, sub in list(ref.named_modules()):
        if isinstance(sub, ACTIVATIONS):
            parent, _, attr = name.rpartition(".")
            setattr(ref.get_submodule(parent) if parent else ref, attr, nn.Identity())
    return ref


class _Done(Exception):
    pass


def _probe(ref: nn.Module, layer: str, onto: str, v: torch.Tensor, size: int) -> torch.Tensor:
    """``L(v) - L(0)`` where ``v`` is added to ``onto``'s output (or is the input).

    One batch of two: ``v`` and zeros; the forward stops once ``layer`` has run.
    """
    pair = torch.stack([v, torch.zeros_like(v)])
    kept: dict[str, torch.Tensor] = {}

    def keep(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        kept["out"] = out.clone()
        raise _Done

    handles = [ref.get_submodule(layer).register_forward_hook(keep)]
    if onto != "input":
        handles.append(ref.get_submodule(onto).register_forward_hook(lambda _m, _i, o: o + pair))
        x = torch.zeros(2, 3, size, size, dtype=DTYPE)
    else:
        x = pair
    try:
        with torch.no_grad(), pytest.raises(_Done):
            ref(x)
    finally:
        for h in handles:
            h.remove()
    return kept["out"][0] - kept["out"][1]


@pytest.fixture(scope="module")
def reference(model) -> nn.Module:  # type: ignore[no-untyped-def]
    return _reference_copy(model.module)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layer", "onto"),
    [
        ("conv_stem", "input"),
        ("blocks.1.0.conv_dw", "input"),
        ("blocks.3", "input"),
        ("conv_head", "input"),
        ("blocks.2.1.conv_pwl", "blocks.1"),
        ("blocks.5.0", "blocks.3.2"),
        ("bn2", "blocks.4"),
    ],
)
def test_default_model_matches_the_linearised_network(
    model, reference, layer: str, onto: str
) -> None:  # type: ignore[no-untyped-def]
    size = model.spec.preprocessing.input_size[0]
    channel = 7
    result = expanded_weights(
        model.module, layer, channel, onto, torch.zeros(1, 3, size, size), model.name
    )
    ref = reference
    generator = torch.Generator().manual_seed(4)
    # Large enough that L(v) - L(0) does not vanish next to L(0) (the biases) in float32.
    v = 1e3 * torch.randn(*result.onto_shape, generator=generator, dtype=DTYPE)
    delta = _probe(ref, layer, onto, v, size)
    cy, cx = result.position
    expected = float(delta[channel, cy, cx])
    top, left, bottom, right = result.box
    got = float((result.values.double() * v[:, top:bottom, left:right]).sum())
    assert got == pytest.approx(expected, rel=1e-4)
    # Outside the box the gradient is zero: probing only there changes nothing.
    outside = v.clone()
    outside[:, top:bottom, left:right] = 0
    if outside.abs().sum() > 0:
        assert float(_probe(ref, layer, onto, outside, size)[channel, cy, cx]) == pytest.approx(
            0.0, abs=1e-9 * max(1.0, abs(expected))
        )
    assert hooks_left(model.module) == 0


def test_layer_after_or_beside_the_onto_layer_is_refused(model) -> None:  # type: ignore[no-untyped-def]
    x = torch.zeros(1, 3, 224, 224)
    with pytest.raises(InvalidParameterError, match="does not run before"):
        expanded_weights(model.module, "blocks.1", 0, "blocks.3", x, model.name)
    with pytest.raises(InvalidParameterError, match="channel"):
        expanded_weights(model.module, "blocks.1", 10_000, "input", x, model.name)
    assert hooks_left(model.module) == 0


def test_support_box_of_an_all_zero_gradient_is_the_whole_extent() -> None:
    assert support_box(torch.zeros(2, 5, 6)) == (0, 0, 5, 6)
    grad = torch.zeros(2, 5, 6)
    grad[1, 1, 2] = 1.0
    grad[0, 3, 4] = -1.0
    assert support_box(grad) == (1, 2, 4, 5)
