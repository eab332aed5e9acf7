"""Decoding and the content-addressed store."""

import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from convscope.errors import ImageTooLargeError, InvalidImageError, UnknownImageError
from convscope.services.storage.images import ImageStore, decode
from tests.conftest import png_bytes


def test_decode_rejects_bad_input_with_reasons() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        decode(b"", max_pixels=10**6)
    with pytest.raises(InvalidImageError, match="not an image") as info:
        decode(b"\x00\x01garbage" * 50, max_pixels=10**6)
    assert info.value.unsupported_type
    with pytest.raises(InvalidImageError, match="not an image"):
        decode(b"<svg xmlns='http://www.w3.org/2000/svg'/>", max_pixels=10**6)
    data = png_bytes(64, 64)
    with pytest.raises(InvalidImageError, match="truncated"):
        decode(data[: len(data) // 2], max_pixels=10**6)
    with pytest.raises(ImageTooLargeError, match="4096 pixels; the limit is 1000"):
        decode(data, max_pixels=1000)


def test_decode_applies_exif_rotation_and_converts_to_rgb() -> None:
    image = Image.new("L", (40, 20), 128)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    rgb, fmt = decode(buffer.getvalue(), max_pixels=10**6)
    assert fmt == "JPEG" and rgb.mode == "RGB" and rgb.size == (20, 40)


def test_store_is_content_addressed_and_bounded(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, max_images=3, max_bytes=10**8, max_pixels=10**6)
    blobs = [png_bytes(32, 32, seed) for seed in range(5)]
    record, created = store.put(blobs[0], "../../etc/passwd")
    assert created and record.id == hashlib.sha256(blobs[0]).hexdigest()
    assert record.name == "passwd" and record.kind == "upload"
    assert store.put(blobs[0], "again")[1] is False
    assert store.data(record.id)[1] == blobs[0]
    for blob in blobs[1:]:
        store.put(blob)
    uploads = [r for r in store.list() if r.kind == "upload"]
    assert len(uploads) == 3
    assert {r.name for r in store.list() if r.kind == "sample"} == {
        "cat",
        "coffee",
        "rocket",
        "astronaut",
    }
    with pytest.raises(UnknownImageError):
        store.record("0" * 64)
    with pytest.raises(UnknownImageError):
        store.record("../../etc/passwd")
    assert not list((tmp_path / "images").glob(".tmp-*"))


def test_second_store_on_the_same_folder_sees_the_same_images(tmp_path: Path) -> None:
    one = ImageStore(tmp_path, max_images=10, max_bytes=10**8, max_pixels=10**6)
    two = ImageStore(tmp_path, max_images=10, max_bytes=10**8, max_pixels=10**6)
    record, _ = one.put(png_bytes(20, 20, 9), "shared.png")
    assert two.data(record.id)[1] == one.data(record.id)[1]
