"""Hostile and awkward inputs, built in memory: images, weights files, a pickle with a payload."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save

UPLOAD_ARCH = "torchvision/squeezenet1_1"  # 0.7 M parameters with 3 classes: a 3 MB upload
UPLOAD_CLASSES = 3


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return encode(rgb(width, height, seed), "PNG")


def png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit ``side`` x ``side`` PNG of zeros: tens of KB on disk, 400 Mpx decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    """Two frames: red, then blue. The first frame is the one that counts."""
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    blue = Image.new("RGB", (32, 32), (0, 0, 255))
    return encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG")  # red in CMYK


def png16() -> bytes:
    """16-bit greyscale: a horizontal ramp over the full 0..65535 range."""
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    return encode(Image.fromarray(ramp), "PNG")


def palette_png() -> bytes:
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)
    # Several transparent palette entries (tRNS as bytes): Pillow warns when converting
    # such an image straight to RGB; the decoder must not let that warning out.
    return encode(image, "PNG", transparency=bytes([0, 255] + [255] * 254))


def exif_rotated() -> bytes:
    """60x40 pixels stored, EXIF orientation 6: displayed as 40x60."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(rgb(60, 40), "JPEG", exif=exif.tobytes())


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script><rect width='10' height='10'/></svg>"
)
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def weights_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from convscope.services.models.sources import build_architecture

    torch.manual_seed(seed)
    model = build_architecture(UPLOAD_ARCH, UPLOAD_CLASSES)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save(state)


def manifest(**overrides: object) -> dict[str, object]:
    return {
        "name": "My Net",
        "architecture": UPLOAD_ARCH,
        "num_classes": UPLOAD_CLASSES,
        "class_names": ["cat", "dog", "cup"],
    } | overrides


class Sentinel:
    """Unpickling this writes a file: proof that a pickle was (or was not) executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"with open({self.path!r}, 'w') as f: f.write('pickle executed')",))


def evil_torch_checkpoint(sentinel: Path) -> bytes:
    """A ``torch.save`` zip checkpoint whose unpickling writes ``sentinel``."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "payload": Sentinel(sentinel)}, buffer)
    return buffer.getvalue()


def evil_raw_pickle(sentinel: Path) -> bytes:
    return pickle.dumps({"payload": Sentinel(sentinel)}, protocol=2)
