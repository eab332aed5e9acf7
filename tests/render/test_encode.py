import io

import numpy as np
import orjson
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from convscope.render import colormap, encode

pytestmark = pytest.mark.quick


def test_png_decodes_to_the_same_pixels() -> None:
    rng = np.random.default_rng(1)
    for shape in [(13, 17), (13, 17, 3)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode.png(pixels)))), pixels)


def test_indexed_png_decodes_to_its_palette_colours() -> None:
    rng = np.random.default_rng(2)
    indices = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    indices = np.repeat(indices, 3, axis=0)  # repeated rows, as upscaling makes
    table = colormap.palette("viridis", background=17)
    assert table is not None and table.shape == (256, 3) and (table[255] == 17).all()
    image = Image.open(io.BytesIO(encode.png(indices, palette=table)))
    assert image.mode == "P" and np.array_equal(np.asarray(image), indices)
    assert np.array_equal(np.asarray(image.convert("RGB")), table[indices])
    assert colormap.palette("gray", background=17) is None


@pytest.mark.parametrize(
    ("pixels", "palette"),
    [
        (np.zeros((2, 2, 3), np.float32), None),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((256, 3), np.uint8)),
        (np.zeros((2, 2), np.uint8), np.zeros((257, 3), np.uint8)),
    ],
)
def test_png_refuses_what_it_cannot_encode(pixels: np.ndarray, palette: np.ndarray | None) -> None:
    with pytest.raises(ValueError, match=r"uint8|palette"):
        encode.png(pixels, palette=palette)


def test_npy_is_exact_float32() -> None:
    t = torch.randn(4, 5, 6)
    back = np.load(io.BytesIO(encode.npy(t)), allow_pickle=False)
    assert back.dtype == np.float32 and np.array_equal(back, t.numpy())


def test_to_uint8_rounds_like_save_image() -> None:
    unit = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1, 0.499])
    assert encode.to_uint8(unit).tolist() == [0, 128, 255, 255, 0, 127]
    assert encode.to_uint8(unit, levels=255).tolist() == [0, 127, 254, 254, 0, 127]


def test_colormap_tables_match_matplotlib() -> None:
    for name in ("viridis", "magma"):
        table = colormap.lookup_table(name)
        expected = np.rint(colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255)
        assert table.shape == (256, 3) and np.array_equal(table, expected.astype(np.uint8))
        steps = colormap.lookup_table(name, 255)
        assert np.array_equal(steps[[0, -1]], table[[0, -1]])  # both ends of the colormap kept
    grey = colormap.apply(np.array([[0, 7, 255]], dtype=np.uint8), "gray")
    assert grey.tolist() == [[[0, 0, 0], [7, 7, 7], [255, 255, 255]]]


def test_json_serialises_numpy() -> None:
    assert orjson.loads(encode.json({"a": np.arange(3, dtype=np.float32)})) == {"a": [0, 1, 2]}
