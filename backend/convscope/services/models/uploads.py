"""Uploaded models: validated, written atomically into the shared models folder, deletable.

Layout of ``<models_dir>`` (shared by every replica, read by ``sources.discover_user_models``)::

    <id>/manifest.json        a model: written complete, then made visible by one rename
    <id>/model.safetensors
    .staging/<id>/            an upload being written (never listed: no manifest at top level)
    .trash/<id>-<random>/     a model being deleted (renamed away first, then removed)

The server picks ``<id>`` (``<sanitised name>-<8 hex>``); the user's name never becomes a path.
A ``kill -9`` at any moment leaves either the old state or the new one visible; leftovers in
``.staging`` and ``.trash`` are removed at the next start.

Weights are checked by ``weights_file`` (the one check, shared with operator models): size
bounds before any read, so a pickle posing as ``model.safetensors`` is rejected as bytes and
never unpickled; the header parsed by the safetensors library; the architecture built on the
``meta`` device with a parameter-count bound; keys, shapes and dtypes compared; only then a
real build and a finite, strict load.

Over 300 lines: the manifest checks, the staged atomic write and crash recovery of one
folder belong together (the weights-file checks themselves are in ``weights_file.py``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import re
import secrets
import shutil
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
from convscope.services.models import sources, weights_file
from convscope.services.storage.files import (
    fsync_dir,
    sha256_file,
    storage_error,
    write_synced,
)

log = logging.getLogger(__name__)

STAGING, TRASH = ".staging", ".trash"
WEIGHTS = "model.safetensors"
STALE_SECONDS = 3600.0  # a staging folder this old belongs to a dead upload, on any replica
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}-[0-9a-f]{8}$")
_ARCH = re.compile(r"^((torchvision|timm)/[A-Za-z0-9_.-]{1,80}|onnx)$")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def sanitise_name(name: str) -> str:
    """A display name -> a lowercase slug of ``[a-z0-9_-]``, at most 40 characters."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")[:40].strip("-_")
    return slug or "model"


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
        max_parameters: int = 200_000_000,
        compute_slot: Callable[[], AbstractContextManager[None]] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self.architectures = architectures
        self.max_bytes = max_bytes
        self.max_classes = max_classes
        self.max_parameters = max_parameters
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
        is_onnx = filename.lower().endswith(".onnx")  # an ONNX graph (models/onnx.py)
        if not filename.lower().endswith(".safetensors") and not is_onnx:
            raise InvalidModelFileError(
                f"weights must be a .safetensors or .onnx file, got "
                f"{Path(filename).name[:100]!r}; pickled checkpoints (.pt, .pth, .bin) are "
                "never accepted: convert them on your machine with `convscope convert`"
            )
        if is_onnx != (isinstance(manifest, dict) and manifest.get("architecture") == "onnx"):
            raise InvalidParameterError(
                "manifest.architecture", "an .onnx file goes with 'architecture': 'onnx'"
            )
        clean = self.check_manifest(manifest)
        model_id = f"{sanitise_name(str(manifest.get('name') or 'model'))}-{secrets.token_hex(4)}"
        clean["name"] = model_id
        staging = self.root / STAGING / model_id
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise storage_error(exc, self.root) from exc
        try:
            path = staging / (sources.ONNX_WEIGHTS if is_onnx else WEIGHTS)
            clean["weights"] = path.name
            clean["bytes"] = self._copy(weights, path)
            notes = self._check_weights(path, clean)
            if notes:
                clean["notes"] = notes
            clean["sha256"] = sha256_file(path)
            write_synced(staging / sources.MANIFEST, json.dumps(clean, indent=2).encode())
            fsync_dir(staging)
            with self._lock:
                os.rename(staging, self.root / model_id)
                fsync_dir(self.root)
                fsync_dir(staging.parent)
        except OSError as exc:  # disk full (507 storage_full) or unwritable (503)
            shutil.rmtree(staging, ignore_errors=True)
            raise storage_error(exc, self.root) from exc
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
                f"expected 'torchvision/<name>', 'timm/<name>' or 'onnx', got {str(arch)[:100]!r}",
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

    def _check_weights(self, path: Path, manifest: dict[str, Any]) -> list[str]:
        """The one weights-file check (``weights_file``): header, meta build, parameter bound,
        keys and shapes; then, in a compute slot, a real build and a strict, finite load.
        Returns notes for the manifest (a key prefix stripped)."""
        arch, classes = manifest["architecture"], manifest["num_classes"]
        if arch == sources.ONNX:
            return self._check_onnx(path, classes)

        def build() -> torch.nn.Module:
            return sources.build_architecture(arch, classes)

        what = f"{arch} with {classes} classes"
        match, _ = weights_file.check(path, build, max_parameters=self.max_parameters, what=what)
        with self._slot():
            weights_file.load(build(), path, match)
        return match.notes

    def _check_onnx(self, path: Path, classes: int) -> list[str]:
        """An ONNX graph: converted once here (``UnsupportedOperatorError`` names what cannot
        be), its output count compared with ``num_classes``."""
        from convscope.services.models.onnx import describe, load_onnx

        info = describe(path)
        if info.num_outputs is not None and info.num_outputs != classes:
            raise InvalidModelFileError(
                f"the ONNX graph has {info.num_outputs} outputs, the manifest {classes} classes"
            )
        with self._slot():
            module, _ = load_onnx(path)
        count = sum(p.numel() for p in module.parameters())
        if count > self.max_parameters:
            raise InvalidModelFileError(
                f"the ONNX model has {count} parameters, above the limit of "
                f"{self.max_parameters} (CONVSCOPE_MAX_MODEL_PARAMETERS)"
            )
        return []

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
