import pytest
import torch
from torchvision.utils import make_grid

from convscope.render import grid

pytestmark = pytest.mark.quick


def test_tile_equals_make_grid_and_layout_points_at_each_tile() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 5, 4), generator=g, dtype=torch.uint8)
    out, layout = grid.tile(images, scale=3, padding=2, ncol=3)
    up = images.repeat_interleave(3, 2).repeat_interleave(3, 3)
    assert torch.equal(out, make_grid(up, nrow=3, padding=2, pad_value=255))
    assert (layout.nrow, layout.ncol, layout.tile_height, layout.tile_width) == (3, 3, 15, 12)
    for i in range(7):
        y, x = layout.tile_origin(i)
        assert torch.equal(out[:, y : y + 15, x : x + 12], up[i])


def test_tile_grey_keeps_one_channel_and_single_image_has_no_padding() -> None:
    images = torch.arange(2 * 1 * 2 * 2, dtype=torch.uint8).view(2, 1, 2, 2)
    out, _ = grid.tile(images, padding=1)
    assert out.shape[0] == 1
    one, layout = grid.tile(images[:1], padding=4)
    assert layout.padding == 0 and torch.equal(one, images[0].expand(3, 2, 2)[:1])


def test_to_unit_channel_and_layer_and_constant_maps() -> None:
    maps = torch.tensor([[[0.0, 2.0]], [[-1.0, 1.0]], [[3.0, 3.0]]])
    per_channel = grid.to_unit(maps, "channel")
    assert torch.allclose(per_channel, torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]], [[0.0, 0.0]]]))
    per_layer = grid.to_unit(maps, "layer")
    assert torch.allclose(per_layer, (maps + 1) / 4)
    assert torch.equal(maps, torch.tensor([[[0.0, 2.0]], [[-1.0, 1.0]], [[3.0, 3.0]]]))


def test_symmetric_unit_puts_zero_at_mid_grey() -> None:
    w = torch.tensor([[[[-2.0, 0.0, 1.0]]], [[[0.5, 0.0, -0.25]]]])
    per_filter = grid.symmetric_unit(w, "filter")
    assert torch.allclose(per_filter[:, 0, 0, 1], torch.tensor([0.5, 0.5]))
    assert per_filter[0, 0, 0, 0] == 0.0 and per_filter[1, 0, 0, 0] == 1.0
    per_layer = grid.symmetric_unit(w, "layer")
    assert torch.allclose(per_layer[1, 0, 0], torch.tensor([0.625, 0.5, 0.4375]))
