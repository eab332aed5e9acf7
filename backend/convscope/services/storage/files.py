"""The one atomic-file primitive, and the one sha256-of-a-file helper.

Every file the service writes that a reader (or another replica) may see is written with
:func:`atomic_write`: a hidden temporary file in the same folder, fsync, rename over the
target, fsync the folder. Readers see the old file or the new one, never part of one; after
a ``kill -9`` or a power cut an acknowledged write is still there.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from convscope.errors import StorageError, StorageFullError

TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".part"  # hidden; never matches a store's listing globs
CHUNK = 1 << 20


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see the module docstring)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_synced(path: Path, data: bytes) -> None:
    """Write a new file and fsync it (for files in a staging folder renamed as a whole)."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_error(exc: OSError, where: Path) -> StorageError:
    """The domain error for a failed write under ``where``: ``StorageFullError`` (507
    ``storage_full``) when the disk or quota is full, ``StorageError`` (503) otherwise."""
    if exc.errno in FULL_ERRNOS:
        return StorageFullError(
            f"no space left for {where.name}: the disk holding {where} is full; the operator "
            "frees space or lowers CONVSCOPE_MAX_IMAGE_STORE_BYTES / "
            "CONVSCOPE_MAX_JOB_RESULTS_BYTES; retry later"
        )
    return StorageError(f"cannot write to {where}: {exc.strerror or exc}")
