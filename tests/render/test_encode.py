import io

import numpy as np
import orjson
import torch
from matplotlib import colormaps
from PIL import Image

from convscope.render import colormap, encode


def test_png_decodes_to_the_same_pixels() -> None:
    rng = np.random.default_rng(1)
    for shape in [(13, 17), (13, 17, 3)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode.png(pixels)))), pixels)


def test_npy_is_exact_float32() -> None:
    t = torch.randn(4, 5, 6)
    back = np.load(io.BytesIO(encode.npy(t)), allow_pickle=False)
    assert back.dtype == np.float32 and np.array_equal(back, t.numpy())


def test_to_uint8_rounds_like_save_image() -> None:
    unit = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1, 0.499])
    assert encode.to_uint8(unit).tolist() == [0, 128, 255, 255, 0, 127]


def test_colormap_tables_match_matplotlib() -> None:
    for name in ("viridis", "magma"):
        table = colormap.lookup_table(name)
        expected = np.rint(colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255)
        assert table.shape == (256, 3) and np.array_equal(table, expected.astype(np.uint8))
    grey = colormap.apply(np.array([[0, 7, 255]], dtype=np.uint8), "gray")
    assert grey.tolist() == [[[0, 0, 0], [7, 7, 7], [255, 255, 255]]]


def test_json_serialises_numpy() -> None:
    assert orjson.loads(encode.json({"a": np.arange(3, dtype=np.float32)})) == {"a": [0, 1, 2]}
