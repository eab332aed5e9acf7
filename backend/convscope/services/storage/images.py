"""Images: safe decoding, a content-addressed bounded store on disk, and bundled samples.

The store is a plain directory (``<data_dir>/images``), so several replicas sharing a volume
serve the same images. Files are written to a temporary name and renamed, so a reader never
sees half an image.

Over 300 lines: decoding untrusted bytes, the content-addressed store, samples,
ownership and eviction share one folder layout and its lock.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from convscope.errors import (
    ImageNotDeletableError,
    ImageTooLargeError,
    InvalidImageError,
    UnknownImageError,
)
from convscope.services.storage.files import (
    TMP_PREFIX,
    TMP_SUFFIX,
    atomic_write,
    sha256_bytes,
    storage_error,
)

log = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_ID_LENGTH = 64
OWNERS = "owners"  # folder of ownership markers, see ImageStore.list_for


@dataclass(frozen=True)
class ImageRecord:
    id: str
    name: str
    kind: str  # "sample" | "upload"
    width: int
    height: int
    format: str
    bytes: int
    media_type: str
    licence: str | None = None
    source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ``warnings.catch_warnings`` swaps process-wide state: one decoder at a time may hold it.
_WARNINGS_LOCK = threading.Lock()
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """``Image.open`` (header only) with Pillow's bomb warning as an error and our own limit.

    Pillow warns above ``Image.MAX_IMAGE_PIXELS`` (about 89 Mpx) and refuses above twice that;
    a warning alone would let it decode, so it is an error here, as is anything above
    ``max_pixels``. The pixel count is known from the header, before any pixel is decoded.
    """
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height} = {width * height} pixels; the limit is "
                f"{max_pixels} (CONVSCOPE_MAX_IMAGE_PIXELS)"
            )
        image.seek(0)  # animated images: the first frame
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit RGB: 16/32-bit greyscale scaled (not clipped), alpha over white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        values = np.asarray(image).astype(np.int64)
        if image.mode != "I" or values.max(initial=0) > 255:
            values = values >> 8  # 16-bit samples: keep the 8 most significant bits
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        import numpy as np

        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode(data: bytes, *, max_pixels: int) -> tuple[Image.Image, str]:
    """Decode image bytes into an RGB ``PIL.Image`` (EXIF rotation applied) and its format.

    Raises ``InvalidImageError`` (empty, not an image, unsupported format, truncated) or
    ``ImageTooLargeError`` (more than ``max_pixels`` pixels, or than Pillow's own bomb limit),
    before decoding pixel data. Animated images give their first frame; 16-bit greyscale is
    scaled to 8 bits; transparent pixels become white.
    """
    if not data:
        raise InvalidImageError(
            "the file is empty (0 bytes); expected a JPEG, PNG, WebP, GIF, BMP or TIFF image"
        )
    try:
        image = _open_checked(data, max_pixels)
        fmt = image.format or "?"
        image.load()
        try:
            image = ImageOps.exif_transpose(image) or image
        except Exception as exc:  # a malformed EXIF block: keep the pixels as stored
            log.info("ignoring unreadable EXIF orientation: %r", exc)
        rgb = _to_rgb(image)
    except (ImageTooLargeError, InvalidImageError):
        raise
    except UnidentifiedImageError:
        raise InvalidImageError(
            "the file is not an image in a supported format; expected JPEG, PNG, WebP, GIF, "
            "BMP or TIFF",
            unsupported_type=True,
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"image rejected as a decompression bomb ({exc}); the limit is {max_pixels} "
            "pixels (CONVSCOPE_MAX_IMAGE_PIXELS)"
        ) from None
    except MemoryError:
        raise ImageTooLargeError("image too large to decode in the memory available") from None
    except Exception as exc:  # untrusted bytes: any decoder failure is the file's fault
        raise InvalidImageError(f"the image is truncated or corrupt: {exc}") from None
    return rgb, fmt


def image_id(data: bytes) -> str:
    return sha256_bytes(data)


STALE_TMP_SECONDS = 3600.0


SAMPLES: dict[str, tuple[str, str, str]] = {
    # file: (name, licence, source) -- all from scikit-image's data module
    "chelsea.jpg": ("cat", "CC0", "scikit-image data: 'chelsea', photo by Stefan van der Walt"),
    "coffee.jpg": ("coffee", "CC0", "scikit-image data: 'coffee', photo by Rachel Michetti"),
    "rocket.jpg": (
        "rocket",
        "Public domain",
        "scikit-image data: 'rocket', launch of DSCOVR on Falcon 9, SpaceX",
    ),
    "astronaut.jpg": (
        "astronaut",
        "Public domain",
        "scikit-image data: 'astronaut', NASA photo of Eileen Collins (public domain)",
    ),
}


class ImageStore:
    """Content-addressed images: id = sha256 of the bytes. Bounded by count and bytes.

    When full, the least recently used uploads are evicted; samples are never evicted.
    """

    def __init__(self, root: Path, *, max_images: int, max_bytes: int, max_pixels: int) -> None:
        self.root = root / "images"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_images = max_images
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self._samples: dict[str, tuple[ImageRecord, bytes]] = {}
        self._load_samples()
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of writes that a killed process (on any replica) never finished."""
        now = time.time()
        for tmp in self.root.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()

    def _load_samples(self) -> None:
        folder = resources.files("convscope") / "data" / "samples"
        for filename, (name, licence, source) in SAMPLES.items():
            data = (folder / filename).read_bytes()
            image, fmt = decode(data, max_pixels=self.max_pixels)
            record = ImageRecord(
                id=image_id(data),
                name=name,
                kind="sample",
                width=image.width,
                height=image.height,
                format=fmt,
                bytes=len(data),
                media_type=Image.MIME.get(fmt, "application/octet-stream"),
                licence=licence,
                source=source,
            )
            self._samples[record.id] = (record, data)

    def _paths(self, image_id: str) -> tuple[Path, Path]:
        if len(image_id) != _ID_LENGTH or not all(c in "0123456789abcdef" for c in image_id):
            raise UnknownImageError(image_id)
        return self.root / f"{image_id}.img", self.root / f"{image_id}.json"

    def put(
        self, data: bytes, name: str | None = None, owner: str | None = None
    ) -> tuple[ImageRecord, bool]:
        """Validate and store ``data``; returns the record and whether it was new.

        ``owner`` (an opaque key, see :meth:`list_for`) becomes one of the upload's owners.
        """
        image, fmt = decode(data, max_pixels=self.max_pixels)
        key = image_id(data)
        if key in self._samples:
            return self._samples[key][0], False
        blob, meta = self._paths(key)
        if owner is not None:
            self._own(owner, key)  # before the existence check: a delete racing us keeps it
        if meta.exists():
            os.utime(meta)
            return self.record(key), False
        safe_name = Path(name or "upload").name[:120] or "upload"
        record = ImageRecord(
            id=key,
            name=safe_name,
            kind="upload",
            width=image.width,
            height=image.height,
            format=fmt,
            bytes=len(data),
            media_type=Image.MIME.get(fmt, "application/octet-stream"),
        )
        with self._lock:
            try:
                atomic_write(blob, data)
                # The metadata file is written last: an image "exists" once its metadata does.
                atomic_write(meta, json.dumps(record.as_dict()).encode())
            except OSError as exc:  # disk full: nothing half-written stays (507 / 503)
                blob.unlink(missing_ok=True)
                raise storage_error(exc, self.root) from exc
            self._evict()
        return record, True

    # --- ownership: who lists and may delete an upload -----------------------------------
    # One empty marker file per (owner, image): ``owners/<sha256(owner)[:32]>/<image id>``.
    # Adding and removing one is a single create or unlink, safe between replicas; the owner
    # key itself is never written to disk.

    def _owner_dir(self, owner: str) -> Path:
        return self.root / OWNERS / sha256_bytes(owner.encode())[:32]

    def _own(self, owner: str, image_id: str) -> None:
        folder = self._owner_dir(owner)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image_id).touch()

    def owns(self, owner: str | None, image_id: str) -> bool:
        return owner is not None and (self._owner_dir(owner) / image_id).is_file()

    def list_for(self, owner: str | None) -> list[ImageRecord]:
        """The samples, then ``owner``'s uploads, most recently uploaded first."""
        samples = [record for record, _ in self._samples.values()]
        if owner is None:
            return samples
        marks = sorted(self._owner_dir(owner).glob("*"), key=_mtime, reverse=True)
        uploads = []
        for mark in marks:
            try:
                uploads.append(self.record(mark.name))
            except UnknownImageError:  # evicted from the store
                mark.unlink(missing_ok=True)
        return samples + uploads

    def disown(self, owner: str | None, image_id: str) -> None:
        """Remove ``owner``'s ownership of an upload; its bytes go when no owner is left.

        Raises ``UnknownImageError`` when ``owner`` does not own it (whether or not someone
        else does: the answer must not tell), ``ImageNotDeletableError`` for a sample.
        """
        image_id = self.resolve(image_id)
        if image_id in self._samples:
            raise ImageNotDeletableError(self._samples[image_id][0].name)
        if owner is None or not self.owns(owner, image_id):
            raise UnknownImageError(image_id)
        with self._lock:
            (self._owner_dir(owner) / image_id).unlink(missing_ok=True)
            if not any((self.root / OWNERS).glob(f"*/{image_id}")):
                blob, meta = self._paths(image_id)
                meta.unlink(missing_ok=True)  # first: the image stops existing
                blob.unlink(missing_ok=True)
                log.info("deleted image %s: its last owner removed it", image_id)

    def resolve(self, image_id: str) -> str:
        """A sample's name (``cat``) or ``sample:<name>`` -> its id; other ids unchanged."""
        name = image_id.removeprefix("sample:")
        if len(name) != _ID_LENGTH:
            for record, _ in self._samples.values():
                if record.name == name:
                    return record.id
        return image_id

    def record(self, image_id: str) -> ImageRecord:
        image_id = self.resolve(image_id)
        if image_id in self._samples:
            return self._samples[image_id][0]
        _, meta = self._paths(image_id)
        try:
            return ImageRecord(**json.loads(meta.read_text()))
        except FileNotFoundError:
            raise UnknownImageError(image_id) from None
        except (OSError, ValueError, TypeError):  # empty or corrupt (a disk full, a crash)
            return self._repair(image_id)

    def _repair(self, image_id: str) -> ImageRecord:
        """A corrupt or empty metadata file is treated as missing: rebuilt from the image
        bytes when they are intact (their sha256 is the id), else both files removed."""
        blob, meta = self._paths(image_id)
        try:
            data = blob.read_bytes()
            if image_id != sha256_bytes(data):
                raise ValueError("the image bytes do not match their id")
            image, fmt = decode(data, max_pixels=self.max_pixels)
        except (OSError, ValueError, InvalidImageError, ImageTooLargeError) as exc:
            log.warning(
                "removing image %s: corrupt metadata and unusable bytes (%s)", image_id, exc
            )
            meta.unlink(missing_ok=True)
            blob.unlink(missing_ok=True)
            raise UnknownImageError(image_id) from None
        record = ImageRecord(
            id=image_id,
            name="upload",
            kind="upload",
            width=image.width,
            height=image.height,
            format=fmt,
            bytes=len(data),
            media_type=Image.MIME.get(fmt, "application/octet-stream"),
        )
        with contextlib.suppress(OSError):  # a full disk: served from the bytes meanwhile
            atomic_write(meta, json.dumps(record.as_dict()).encode())
            log.warning("repaired the corrupt metadata of image %s", image_id)
        return record

    def data(self, image_id: str) -> tuple[ImageRecord, bytes]:
        image_id = self.resolve(image_id)
        if image_id in self._samples:
            return self._samples[image_id]
        record = self.record(image_id)
        blob, meta = self._paths(image_id)
        try:
            data = blob.read_bytes()
        except FileNotFoundError:
            raise UnknownImageError(image_id) from None
        with contextlib.suppress(OSError):
            os.utime(meta)  # recently used: evicted last
        return record, data

    def open(self, image_id: str) -> tuple[ImageRecord, Image.Image]:
        record, data = self.data(image_id)
        image, _ = decode(data, max_pixels=self.max_pixels)
        return record, image

    def list(self) -> list[ImageRecord]:
        samples = [record for record, _ in self._samples.values()]
        uploads = []
        for meta in sorted(self.root.glob("*.json"), key=_mtime, reverse=True):
            if meta.name.startswith("."):
                continue
            try:
                uploads.append(ImageRecord(**json.loads(meta.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # evicted or being written by another replica
        return samples + uploads

    def _evict(self) -> None:
        metas = sorted(self.root.glob("*.json"), key=_mtime)
        sizes = {m: _size(m.with_suffix(".img")) for m in metas}
        total = sum(sizes.values())
        while metas and (len(metas) > self.max_images or total > self.max_bytes):
            oldest = metas.pop(0)
            oldest.unlink(missing_ok=True)
            oldest.with_suffix(".img").unlink(missing_ok=True)
            for mark in (self.root / OWNERS).glob(f"*/{oldest.stem}"):
                mark.unlink(missing_ok=True)
            total -= sizes[oldest]
            log.info("evicted image %s from the store", oldest.stem)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
