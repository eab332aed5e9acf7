"""Retention passes and the repair of corrupt image metadata."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from convscope.errors import UnknownImageError
from convscope.services.storage import retention
from convscope.services.storage.images import ImageStore
from tests.conftest import png_bytes


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_trim_keeps_the_newest_within_count_bytes_and_age(tmp_path: Path) -> None:
    for i in range(6):
        path = tmp_path / f"{i}.png"
        path.write_bytes(b"x" * 100)
        _age(path, 600 - i * 100)  # 0.png oldest
    (tmp_path / ".tmp-a.part").write_bytes(b"x")  # never counted or trimmed here
    assert retention.trim(tmp_path, "*.png", max_count=4, max_bytes=10**6, max_age=1e9) == 2
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["2.png", "3.png", "4.png", "5.png"]
    assert retention.trim(tmp_path, "*.png", max_count=10, max_bytes=250, max_age=1e9) == 2
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["4.png", "5.png"]
    assert retention.trim(tmp_path, "*.png", max_count=10, max_bytes=10**6, max_age=150) == 1
    assert [p.name for p in tmp_path.glob("*.png")] == ["5.png"]
    assert (tmp_path / ".tmp-a.part").exists()


def test_temporaries_and_orphans_are_removed_only_when_old(tmp_path: Path) -> None:
    fresh, stale = tmp_path / ".tmp-1.part", tmp_path / ".tmp-2.part"
    for path in (fresh, stale):
        path.write_bytes(b"x")
    _age(stale, 7200)
    pair = [tmp_path / "a.img", tmp_path / "a.json"]
    orphan_img, orphan_json, new_orphan = (
        tmp_path / "b.img",
        tmp_path / "c.json",
        tmp_path / "d.img",
    )
    for path in [*pair, orphan_img, orphan_json, new_orphan]:
        path.write_bytes(b"x")
    for path in [*pair, orphan_img, orphan_json]:
        _age(path, 7200)
    assert retention.remove_temporaries(tmp_path) == 1
    assert retention.remove_orphans(tmp_path, ".img", ".json") == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".tmp-1.part", "a.img", "a.json", "d.img"]


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"id": 1}'])
def test_corrupt_metadata_is_rebuilt_from_intact_bytes(tmp_path: Path, content: bytes) -> None:
    store = ImageStore(tmp_path, max_images=10, max_bytes=10**7, max_pixels=10**7)
    data = png_bytes(30, 20)
    record, _ = store.put(data, "mine.png")
    meta = tmp_path / "images" / f"{record.id}.json"
    meta.write_bytes(content)
    repaired = store.record(record.id)
    assert (repaired.width, repaired.height, repaired.bytes) == (30, 20, len(data))
    assert json.loads(meta.read_text())["id"] == record.id  # written back
    assert store.data(record.id)[1] == data


def test_corrupt_metadata_with_bad_bytes_is_removed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, max_images=10, max_bytes=10**7, max_pixels=10**7)
    record, _ = store.put(png_bytes(30, 20), "mine.png")
    folder = tmp_path / "images"
    (folder / f"{record.id}.json").write_bytes(b"")
    (folder / f"{record.id}.img").write_bytes(b"truncated")
    assert hashlib.sha256(b"truncated").hexdigest() != record.id
    with pytest.raises(UnknownImageError):
        store.record(record.id)
    assert not (folder / f"{record.id}.json").exists()
    assert not (folder / f"{record.id}.img").exists()
