"""Retention for the folders that grow: job results, temporary files, orphans.

Every function here is one pass over one folder, safe to run on any replica at any time
(another replica may be writing: only files older than ``grace`` seconds are leftovers), and
returns how many entries it removed. ``Convscope.collect_leftovers`` runs them at start and
every ``CONVSCOPE_JANITOR_SECONDS``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from convscope.services.storage.files import TMP_PREFIX, TMP_SUFFIX

log = logging.getLogger(__name__)

GRACE_SECONDS = 3600.0  # a write this old belongs to a dead process


def _stat(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime, st.st_size


def remove_temporaries(folder: Path, grace: float = GRACE_SECONDS) -> int:
    """Temporary files of ``atomic_write`` (``.tmp-*.part``) older than ``grace`` seconds."""
    removed = 0
    now = time.time()
    for tmp in folder.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}") if folder.is_dir() else ():
        found = _stat(tmp)
        if found is not None and now - found[0] > grace:
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
    return removed


def trim(
    folder: Path,
    pattern: str,
    *,
    max_count: int,
    max_bytes: int,
    max_age: float,
) -> int:
    """Remove files matching ``pattern``: those older than ``max_age`` seconds, then the least
    recently used (oldest modification time) until at most ``max_count`` files and
    ``max_bytes`` bytes remain."""
    if not folder.is_dir():
        return 0
    now = time.time()
    files = []
    for path in folder.glob(pattern):
        found = _stat(path)
        if found is not None and not path.name.startswith("."):
            files.append((found[0], found[1], path))
    files.sort()  # oldest first
    total = sum(size for _, size, _ in files)
    removed = 0
    for i, (mtime, size, path) in enumerate(files):
        left = len(files) - i
        if now - mtime <= max_age and left <= max_count and total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
        total -= size
    if removed:
        log.info("removed %d old files from %s", removed, folder)
    return removed


def remove_orphans(folder: Path, data: str, meta: str, grace: float = GRACE_SECONDS) -> int:
    """Pairs ``<id><data>`` / ``<id><meta>`` with one half missing for over ``grace`` seconds
    (a write killed between the two, or an eviction killed between the two unlinks)."""
    if not folder.is_dir():
        return 0
    now = time.time()
    removed = 0
    for path in [*folder.glob(f"*{data}"), *folder.glob(f"*{meta}")]:
        if path.name.startswith("."):
            continue
        other = path.with_suffix(meta if path.suffix == data else data)
        found = _stat(path)
        if found is None or other.exists() or now - found[0] <= grace:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
            log.info("removed orphan %s", path.name)
    return removed


def remove_stale_folders(folder: Path, grace: float) -> int:
    """Sub-folders of ``folder`` not modified for ``grace`` seconds (staging, trash)."""
    if not folder.is_dir():
        return 0
    now = time.time()
    removed = 0
    for entry in folder.iterdir():
        found = _stat(entry)
        if found is not None and now - found[0] >= grace:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
            log.info("removed leftover %s", entry)
    return removed
