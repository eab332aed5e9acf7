"""Named collections: an ordered list of image-store ids, one JSON file per collection.

``<data_dir>/collections/<cid>/collection.json`` holds ``{id, name, created, source,
images}``; it is rewritten with ``atomic_write`` (readers and other replicas see the old
list or the new one). The images themselves are ordinary image-store images. A
collection's indexes live in the same folder (see ``indexfiles.py``), so deleting a
collection removes its indexes and nothing else.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from convscope.errors import InvalidParameterError, UnknownCollectionError
from convscope.services.storage.files import atomic_write

MAX_NAME = 120


@dataclass
class Collection:
    id: str
    name: str
    created: float
    source: dict[str, str] | None = None  # {"root", "path"} for a server folder
    images: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "count": len(self.images),
            "created": self.created,
            "source": self.source,
        }


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise InvalidParameterError(
            "name", f"expected 1 to {MAX_NAME} printable characters, got {name[:40]!r}"
        )
    return name


class CollectionStore:
    """Create, list, extend and delete collections. Thread-safe; no module state."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "collections"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def folder(self, cid: str) -> Path:
        if len(cid) != 32 or not all(c in "0123456789abcdef" for c in cid):
            raise UnknownCollectionError(cid)
        return self.root / cid

    def _file(self, cid: str) -> Path:
        return self.folder(cid) / "collection.json"

    def create(self, name: str, source: dict[str, str] | None = None) -> Collection:
        collection = Collection(uuid.uuid4().hex, check_name(name), time.time(), source)
        folder = self.root / collection.id
        folder.mkdir(parents=True)
        self._write(collection)
        return collection

    def _write(self, collection: Collection) -> None:
        atomic_write(self._file(collection.id), json.dumps(asdict(collection)).encode())

    def get(self, cid: str) -> Collection:
        try:
            data = json.loads(self._file(cid).read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise UnknownCollectionError(cid) from None
        return Collection(**data)

    def list_all(self) -> list[Collection]:
        out = []
        for path in self.root.glob("*/collection.json"):
            try:
                out.append(Collection(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # being deleted or written by another replica
        return sorted(out, key=lambda c: c.created)

    def find(self, name: str) -> Collection | None:
        return next((c for c in self.list_all() if c.name == name), None)

    def add(self, cid: str, image_ids: list[str]) -> tuple[list[str], list[str]]:
        """Append ids not in the collection yet; returns (added, already there)."""
        with self._lock:
            collection = self.get(cid)
            present = set(collection.images)
            added, duplicates = [], []
            for image_id in image_ids:
                if image_id in present:
                    duplicates.append(image_id)
                else:
                    present.add(image_id)
                    added.append(image_id)
            if added:
                collection.images.extend(added)
                self._write(collection)
        return added, duplicates

    def delete(self, cid: str) -> None:
        folder = self.folder(cid)
        with self._lock:
            if not (folder / "collection.json").is_file():
                raise UnknownCollectionError(cid)
            # Rename first: the collection disappears at once, even for a running index job.
            gone = self.root / f".deleted-{cid}-{uuid.uuid4().hex[:8]}"
            folder.rename(gone)
        shutil.rmtree(gone, ignore_errors=True)
