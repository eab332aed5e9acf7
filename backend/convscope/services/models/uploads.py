"""Uploaded models: validated, written atomically into the shared models folder, deletable.

Layout of ``<models_dir>`` (shared by every replica, read by ``sources.discover_user_models``)::

    <id>/manifest.json        a model: written complete, then made visible by one rename
    <id>/model.safetensors
    .staging/<id>/            an upload being written (never listed: no manifest at top level)
    .trash/<id>-<random>/     a model being deleted (renamed away first, then removed)

The server picks ``<id>`` (``<sanitised name>-<8 hex>``); the user's name never becomes a path.
A ``kill -9`` at any moment leaves either the old state or the new one visible; leftovers in
``.staging`` and ``.trash`` are removed at the next start.

Weights are checked before any library parses them: the safetensors header (8-byte length,
JSON table of dtype, shape and offsets) is read and verified by hand, so a pickle posing as
``model.safetensors`` is rejected as bytes and never unpickled. Then keys, shapes and dtypes are
compared with the architecture, and every float tensor must be finite.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import json
import logging
import math
import os
import re
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from convscope.errors import (
    InvalidModelFileError,
    InvalidParameterError,
    ModelNotDeletableError,
    StorageError,
    UnknownModelError,
)
from convscope.services.models import sources
from convscope.services.storage.files import fsync_dir, sha256_file, write_synced

log = logging.getLogger(__name__)

STAGING, TRASH = ".staging", ".trash"
WEIGHTS = "model.safetensors"
STALE_SECONDS = 3600.0  # a staging folder this old belongs to a dead upload, on any replica
MAX_HEADER_BYTES = 16 * 1024**2
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}-[0-9a-f]{8}$")
_ARCH = re.compile(r"^(torchvision|timm)/[A-Za-z0-9_.-]{1,80}$")
# safetensors dtype -> (bytes per element, kind); kind must match the architecture's tensor.
DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float"),
    "F32": (4, "float"),
    "F16": (2, "float"),
    "BF16": (2, "float"),
    "I64": (8, "int"),
    "I32": (4, "int"),
    "I16": (2, "int"),
    "I8": (1, "int"),
    "U8": (1, "int"),
    "BOOL": (1, "bool"),
}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def sanitise_name(name: str) -> str:
    """A display name -> a lowercase slug of ``[a-z0-9_-]``, at most 40 characters."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")[:40].strip("-_")
    return slug or "model"


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensor table of a ``.safetensors`` file, checked against the file's size.

    Returns ``{key: {"dtype", "shape", "data_offsets"}}``. Raises ``InvalidModelFileError`` for
    anything that is not a well-formed safetensors file (a pickle, a zip, truncated data,
    overlapping or out-of-range offsets, unknown dtypes).
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidModelFileError(f"weights file is {size} bytes: not a .safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > min(MAX_HEADER_BYTES, size - 8):
            raise InvalidModelFileError(
                "weights file is not a .safetensors file: its first 8 bytes do not give a "
                f"header length that fits the file (got {length}); pickled checkpoints "
                "(.pt, .pth, .bin) are never accepted; convert them with "
                "safetensors.torch.save_file"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise InvalidModelFileError("weights file header is not valid JSON") from None
    if not isinstance(header, dict):
        raise InvalidModelFileError("weights file header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    spans = []
    for key, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            itemsize = DTYPES[dtype][0]
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"shape {shape!r}")
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
                raise ValueError(f"offsets {begin!r}, {end!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelFileError(
                f"weights file entry {key[:100]!r} is malformed ({exc}); expected a dtype in "
                f"{', '.join(DTYPES)}, a shape and data offsets"
            ) from None
        if end - begin != math.prod(shape) * itemsize or end > data_size:
            raise InvalidModelFileError(
                f"weights file entry {key[:100]!r}: its offsets do not match its shape and "
                f"dtype, or run past the end of the file (truncated upload?)"
            )
        spans.append((begin, end))
    spans.sort()
    if any(a_end > b_begin for (_, a_end), (b_begin, _) in itertools.pairwise(spans)):
        raise InvalidModelFileError("weights file has overlapping tensors")
    return header


class ModelStore:
    """Add and delete uploaded models in ``root`` (``CONVSCOPE_MODELS_DIR``).

    ``compute_slot`` bounds how many uploads build a model at once (the service's compute
    gate); ``on_change`` is called after every add and delete (``registry.refresh``).
    """

    def __init__(
        self,
        root: Path,
        *,
        architectures: list[str],
        max_bytes: int,
        max_classes: int,
        compute_slot: Callable[[], AbstractContextManager[None]] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self.architectures = architectures
        self.max_bytes = max_bytes
        self.max_classes = max_classes
        self._slot = compute_slot or contextlib.nullcontext
        self._on_change = on_change or (lambda: None)
        self._lock = threading.Lock()
        with contextlib.suppress(OSError):  # a read-only folder still serves its models
            self.recover()

    # --- crash recovery --------------------------------------------------------------------

    def recover(self) -> None:
        """Remove what a killed process left: every trash entry, stale staging folders."""
        now = time.time()
        for folder, max_age in ((TRASH, 0.0), (STAGING, STALE_SECONDS)):
            parent = self.root / folder
            if not parent.is_dir():
                continue
            for entry in parent.iterdir():
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime >= max_age:
                        shutil.rmtree(entry, ignore_errors=True)
                        log.info("removed leftover %s/%s", folder, entry.name)

    # --- add -------------------------------------------------------------------------------

    def add(self, weights: BinaryIO, filename: str, manifest: dict[str, Any]) -> str:
        """Validate and store a model; returns its id (the name it is served under).

        ``manifest``: ``name`` (display name), ``architecture`` (``torchvision/<arch>`` or
        ``timm/<arch>``), ``num_classes``, optional ``title``, ``class_names``,
        ``preprocessing``. Raises ``InvalidParameterError`` (manifest), ``InvalidModelFileError``
        (weights, with ``missing``/``unexpected`` keys), ``StorageError``.
        """
        if not filename.lower().endswith(".safetensors"):
            raise InvalidModelFileError(
                f"weights must be a .safetensors file, got {Path(filename).name[:100]!r}; "
                "pickled checkpoints (.pt, .pth, .bin) are never accepted"
            )
        clean = self.check_manifest(manifest)
        model_id = f"{sanitise_name(str(manifest.get('name') or 'model'))}-{secrets.token_hex(4)}"
        clean["name"] = model_id
        staging = self.root / STAGING / model_id
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise StorageError(f"cannot write to the models folder {self.root}: {exc}") from exc
        try:
            path = staging / WEIGHTS
            clean["bytes"] = self._copy(weights, path)
            header = read_safetensors_header(path)
            with self._slot():
                self._check_weights(path, header, clean)
            clean["sha256"] = sha256_file(path)
            write_synced(staging / sources.MANIFEST, json.dumps(clean, indent=2).encode())
            fsync_dir(staging)
            with self._lock:
                os.rename(staging, self.root / model_id)
                fsync_dir(self.root)
                fsync_dir(staging.parent)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StorageError(f"cannot write to the models folder {self.root}: {exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("stored uploaded model %s (%s)", model_id, clean["architecture"])
        self._on_change()
        return model_id

    def check_manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The manifest's fields, checked and normalised (``InvalidParameterError`` if not)."""
        if not isinstance(manifest, dict):
            raise InvalidParameterError("manifest", "expected a JSON object")
        arch = manifest.get("architecture")
        if not isinstance(arch, str) or not _ARCH.match(arch):
            raise InvalidParameterError(
                "manifest.architecture",
                f"expected 'torchvision/<name>' or 'timm/<name>', got {str(arch)[:100]!r}",
            )
        if not any(fnmatch.fnmatchcase(arch, pattern) for pattern in self.architectures):
            raise InvalidParameterError(
                "manifest.architecture",
                f"{arch!r} is not allowed here; allowed: {', '.join(self.architectures)} "
                "(CONVSCOPE_MODEL_UPLOAD_ARCHITECTURES)",
            )
        n = manifest.get("num_classes")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.max_classes:
            raise InvalidParameterError(
                "manifest.num_classes",
                f"expected an integer in 1..{self.max_classes} (CONVSCOPE_MAX_NUM_CLASSES), "
                f"got {str(n)[:40]!r}",
            )
        names = manifest.get("class_names")
        if names is not None and (
            not isinstance(names, list)
            or len(names) != n
            or not all(isinstance(c, str) and len(c) <= 200 for c in names)
        ):
            raise InvalidParameterError(
                "manifest.class_names",
                f"expected a list of {n} strings (num_classes), each at most 200 characters",
            )
        title = manifest.get("title") or manifest.get("name") or arch
        clean: dict[str, Any] = {
            "title": str(title)[:120],
            "architecture": arch,
            "num_classes": n,
            "weights": WEIGHTS,
            "uploaded": True,
            "uploaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if names is not None:
            clean["class_names"] = names
        if manifest.get("preprocessing") is not None:
            clean["preprocessing"] = _check_preprocessing(manifest["preprocessing"])
        return clean

    def _copy(self, source: BinaryIO, path: Path) -> int:
        total = 0
        with path.open("wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                total += len(chunk)
                if total > self.max_bytes:
                    raise InvalidModelFileError(
                        f"weights file larger than the limit of {self.max_bytes} bytes "
                        "(CONVSCOPE_MAX_MODEL_UPLOAD_BYTES)"
                    )
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return total

    def _check_weights(
        self, path: Path, header: dict[str, dict[str, Any]], manifest: dict[str, Any]
    ) -> None:
        """Keys, shapes, dtypes against the architecture; then a strict, finite load."""
        model = sources.build_architecture(manifest["architecture"], manifest["num_classes"])
        expected = model.state_dict()
        missing = sorted(set(expected) - set(header))
        unexpected = sorted(set(header) - set(expected))
        problems = []
        for key in sorted(set(expected) & set(header)):
            want, got = expected[key], header[key]
            if list(want.shape) != got["shape"]:
                problems.append(f"{key}: expected shape {list(want.shape)}, got {got['shape']}")
            kind = _kind(want)
            if DTYPES[got["dtype"]][1] != kind:
                problems.append(f"{key}: expected a {kind} tensor, got {got['dtype']}")
        if missing or unexpected or problems:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
            if problems:
                parts.append("; ".join(problems[:5]))
            raise InvalidModelFileError(
                f"weights do not fit {manifest['architecture']} with "
                f"{manifest['num_classes']} classes: " + ", ".join(parts),
                missing=missing[:100],
                unexpected=unexpected[:100],
                mismatched=problems[:100],
            )
        sources.load_safetensors_strict(model, path)  # NaN/Inf check and a real strict load

    # --- delete ----------------------------------------------------------------------------

    def is_uploaded(self, model_id: str) -> bool:
        if not _ID.match(model_id):
            return False
        try:
            manifest = json.loads((self.root / model_id / sources.MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(manifest, dict) and manifest.get("uploaded") is True

    def delete(self, model_id: str, source: str | None) -> None:
        """Remove an uploaded model: rename it into ``.trash`` (atomic), then delete the files.

        ``source`` is the registry's source of ``model_id`` (``None``: not listed).
        """
        if not self.is_uploaded(model_id):
            if source is not None:
                raise ModelNotDeletableError(model_id, source)
            raise UnknownModelError(model_id, self.ids())
        trash = self.root / TRASH / f"{model_id}-{secrets.token_hex(4)}"
        try:
            trash.parent.mkdir(exist_ok=True)
            with self._lock:
                os.rename(self.root / model_id, trash)
                fsync_dir(self.root)
        except FileNotFoundError:
            raise UnknownModelError(model_id, self.ids()) from None
        except OSError as exc:
            raise StorageError(f"cannot delete from the models folder {self.root}: {exc}") from exc
        shutil.rmtree(trash, ignore_errors=True)
        log.info("deleted uploaded model %s", model_id)
        self._on_change()

    def ids(self) -> list[str]:
        return sorted(p.name for p in self._folders() if self.is_uploaded(p.name))

    def _folders(self) -> Iterator[Path]:
        if self.root.is_dir():
            yield from (p for p in self.root.iterdir() if not p.name.startswith("."))


def _kind(tensor: torch.Tensor) -> str:
    if tensor.is_floating_point():
        return "float"
    return "bool" if tensor.dtype == torch.bool else "int"


def _check_preprocessing(pre: Any) -> dict[str, Any]:
    def bad(detail: str) -> InvalidParameterError:
        return InvalidParameterError("manifest.preprocessing", detail)

    if not isinstance(pre, dict):
        raise bad("expected a JSON object")
    crop = pre.get("crop_size", 224)
    resize = pre.get("resize_size", crop * 8 // 7 if isinstance(crop, int) else 256)
    if not isinstance(crop, int) or not 16 <= crop <= 1024:
        raise bad(f"crop_size: expected an integer in 16..1024, got {str(crop)[:40]!r}")
    if not isinstance(resize, int) or not crop <= resize <= 2048:
        raise bad(f"resize_size: expected an integer in crop_size..2048, got {str(resize)[:40]!r}")
    out: dict[str, Any] = {"crop_size": crop, "resize_size": resize}
    for key, default, positive in (
        ("mean", [0.485, 0.456, 0.406], False),
        ("std", [0.229, 0.224, 0.225], True),
    ):
        value = pre.get(key, default)
        if not (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, int | float) and math.isfinite(v) for v in value)
            and (not positive or all(v > 0 for v in value))
        ):
            raise bad(f"{key}: expected 3 finite numbers" + (" > 0" if positive else ""))
        out[key] = [float(v) for v in value]
    interpolation = pre.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise bad(f"interpolation: expected one of {', '.join(INTERPOLATIONS)}")
    out["interpolation"] = interpolation
    return out
