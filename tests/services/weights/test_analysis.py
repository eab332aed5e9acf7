"""First-layer filter analysis on synthetic Gabor filters with known parameters."""

from __future__ import annotations

import math

import pytest
import torch

from convscope.services.weights.analysis import analyse, sorted_groups

SIZE = 15


def gabor(orientation: float, frequency: float, sigma: float = 3.0, phase: float = 0.0):  # type: ignore[no-untyped-def]
    """A grating whose wave vector points ``orientation`` degrees counter-clockwise from x,
    as drawn (y up), under a Gaussian window: ``Tensor[SIZE, SIZE]``."""
    half = SIZE // 2
    y, x = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float64) - half,
        torch.arange(SIZE, dtype=torch.float64) - half,
        indexing="ij",
    )
    t = math.radians(orientation)
    along = x * math.cos(t) + (-y) * math.sin(t)  # rows grow downwards: y up is -row
    window = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    return window * torch.cos(2 * math.pi * frequency * along + phase)


def _angle_error(a: float, b: float) -> float:
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


@pytest.mark.parametrize("orientation", [0, 20, 45, 72, 90, 118, 135, 160])
@pytest.mark.parametrize("frequency", [0.08, 0.15, 0.25, 0.35])
@pytest.mark.parametrize("phase", [0.0, math.pi / 2])
def test_gabor_orientation_and_frequency_are_recovered(
    orientation: float, frequency: float, phase: float
) -> None:
    g = gabor(orientation, frequency, phase=phase)
    traits = analyse(torch.stack([g, g, g])[None].float())[0]
    assert traits.orientation is not None
    assert _angle_error(traits.orientation, orientation) <= 10
    assert traits.frequency == pytest.approx(frequency, rel=0.15)
    assert traits.colour == "grey"
    assert traits.energy == pytest.approx(float(3 * g.square().sum()), rel=1e-5)


def test_colour_classes() -> None:
    g = gabor(30, 0.2)
    blob = gabor(0, 0.0, sigma=2.0)
    filters = {
        "grey": (1.0, 1.0, 1.0),
        "grey, slightly tinted": (1.0, 0.9, 0.8),
        "red-green": (1.0, -1.0, 0.0),
        "blue-yellow": (-0.5, -0.5, 1.0),
        "red only": (1.0, 0.0, 0.0),
        "blue only": (0.0, 0.0, -1.0),
    }
    expected = [
        "grey",
        "grey",
        "colour-opponent",
        "colour-opponent",
        "single colour",
        "single colour",
    ]
    weight = torch.stack(
        [torch.stack([c * g for c in colour]) for colour in filters.values()]
        + [torch.stack([blob, -blob, 0 * blob])]  # a red-green opponent blob
    ).float()
    traits = analyse(weight)
    assert [t.colour for t in traits] == [*expected, "colour-opponent"]
    assert traits[-1].orientation is None and traits[-1].frequency == 0.0  # a blob
    groups = sorted_groups(traits)
    assert list(groups) == ["grey", "colour-opponent", "single colour"]
    assert sorted(i for members in groups.values() for i in members) == list(range(7))
    assert groups["colour-opponent"][-1] == 6  # blobs come after oriented filters


def test_groups_sort_by_orientation() -> None:
    angles = [150, 10, 95, 45]
    weight = torch.stack([torch.stack([gabor(a, 0.2)] * 3) for a in angles]).float()
    groups = sorted_groups(analyse(weight))
    assert groups == {"grey": [1, 3, 2, 0]}


def test_analyse_refuses_filters_that_do_not_read_rgb() -> None:
    with pytest.raises(ValueError, match=r"expected filters \[O, 3, kH, kW\]"):
        analyse(torch.zeros(4, 8, 3, 3))


def test_dead_filters_are_grey_blobs() -> None:
    g = gabor(45, 0.2)
    weight = torch.stack([torch.stack([g, -g, 0 * g]), torch.stack([g, -g, 0 * g]) * 1e-7])
    traits = analyse(weight.float())
    assert traits[0].colour == "colour-opponent" and traits[0].orientation is not None
    assert traits[1].colour == "grey" and traits[1].orientation is None
    assert traits[1].frequency == 0.0
