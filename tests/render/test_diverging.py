"""Diverging colours and stacked sections: pure arrays, checked value by value."""

import numpy as np
import pytest

from convscope.render.diverging import diverging_rgb, stack_sections, symmetric_scale


def test_diverging_ends_and_middle() -> None:
    rgb = diverging_rgb(np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 3.0]))
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 3)
    assert rgb[0].tolist() == [33, 102, 172]  # blue: negative
    assert rgb[2].tolist() == [255, 255, 255]  # white: zero
    assert rgb[4].tolist() == [178, 24, 43]  # red: positive
    assert rgb[5].tolist() == rgb[4].tolist()  # clipped
    # halfway to blue: 255 + 0.5 * (end - 255), halves rounded to even (178.5, 213.5)
    assert rgb[1].tolist() == [144, 178, 214]


def test_symmetric_scale_per_map_and_overall_leaves_input_alone() -> None:
    maps = np.array([[[2.0, -4.0]], [[0.0, 0.0]], [[1.0, 0.5]]], np.float32)
    before = maps.copy()
    per_map = symmetric_scale(maps)
    np.testing.assert_array_equal(per_map, [[[0.5, -1.0]], [[0.0, 0.0]], [[1.0, 0.5]]])
    overall = symmetric_scale(maps, per_map=False)
    np.testing.assert_array_equal(overall, maps / 4.0)
    np.testing.assert_array_equal(maps, before)


def test_stack_sections() -> None:
    a = np.full((2, 3, 3), 10, np.uint8)
    b = np.full((1, 5, 3), 20, np.uint8)
    out, tops = stack_sections([a, b], gap=2, background=7)
    assert out.shape == (5, 5, 3) and tops == [0, 4]
    assert (out[0:2, 0:3] == 10).all() and (out[0:2, 3:] == 7).all()
    assert (out[2:4] == 7).all() and (out[4] == 20).all()
    with pytest.raises(ValueError, match="at least one"):
        stack_sections([])
