"""Members of an upload, an archive or a server folder, checked before any byte is stored.

Every source yields :class:`Member` s (a display name and the bytes) or :class:`Skip` s (a
name and why). Nothing is ever written under a member's name: images go to the
content-addressed image store, so an absolute path or ``..`` cannot reach outside it; such
members are still refused and reported, as are symlinks, hard links, device files, FIFOs,
nested archives and anything over the per-file limit. Archive bombs are refused as a whole
(``ArchiveTooLargeError``, 413) when the member count or the total uncompressed size
(counted as members are read, not as declared) passes its bound.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from convscope.errors import ArchiveTooLargeError, CollectionPathError, InvalidArchiveError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".gz", ".bz2", ".xz")
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zXZ")


@dataclass(frozen=True)
class Limits:
    max_members: int  # members of one archive or files of one folder
    max_total: int  # uncompressed bytes of one archive or folder
    max_file: int  # bytes of one member


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes


@dataclass(frozen=True)
class Skip:
    name: str
    reason: str


Item = Member | Skip


def _looks_like_archive(name: str, head: bytes) -> bool:
    lower = name.lower()
    return (
        lower.endswith(ARCHIVE_SUFFIXES)
        or head.startswith(_ARCHIVE_MAGIC)
        or (len(head) >= 262 and head[257:262] == b"ustar")
    )


def _name_problem(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path with '..'"
    return None


def _check_data(name: str, data: bytes) -> Item:
    if _looks_like_archive(name, data[:512]):
        return Skip(name, "nested archive (archives inside archives are not opened)")
    return Member(name, data)


def from_files(files: list[tuple[str, BinaryIO]], limits: Limits) -> Iterator[Item]:
    """Uploaded files (multipart ``files``), each read up to ``limits.max_file`` bytes."""
    if len(files) > limits.max_members:
        raise ArchiveTooLargeError(
            f"{len(files)} files in one request; the limit is {limits.max_members} "
            "(CONVSCOPE_MAX_COLLECTION_MEMBERS)"
        )
    for name, stream in files:
        data = stream.read(limits.max_file + 1)
        if len(data) > limits.max_file:
            yield Skip(name, f"larger than {limits.max_file} bytes (CONVSCOPE_MAX_UPLOAD_BYTES)")
            continue
        yield _check_data(name, data)


def from_archive(name: str, stream: BinaryIO, limits: Limits) -> Iterator[Item]:
    """Members of a ``.zip`` or a (compressed) ``.tar``; refuses bombs as a whole."""
    head = stream.read(8)
    stream.seek(0)
    if head.startswith(b"PK"):
        yield from _zip_members(stream, limits)
        return
    try:
        archive = tarfile.open(fileobj=stream, mode="r:*")  # noqa: SIM115 - closed below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidArchiveError(
            f"{name!r} is not a zip or tar archive ({exc}); expected .zip, .tar, .tar.gz, "
            ".tar.bz2 or .tar.xz"
        ) from None
    with archive:
        yield from _tar_members(archive, limits)


def _zip_members(stream: BinaryIO, limits: Limits) -> Iterator[Item]:
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidArchiveError(f"not a valid zip archive: {exc}") from None
    with archive:
        infos = archive.infolist()
        files = [info for info in infos if not info.is_dir()]
        if len(files) > limits.max_members:
            raise ArchiveTooLargeError(
                f"the archive has {len(files)} members; the limit is {limits.max_members} "
                "(CONVSCOPE_MAX_COLLECTION_MEMBERS)"
            )
        declared = sum(info.file_size for info in files)
        if declared > limits.max_total:
            raise ArchiveTooLargeError(
                f"the archive unpacks to {declared} bytes; the limit is {limits.max_total} "
                "(CONVSCOPE_MAX_COLLECTION_BYTES)"
            )
        total = 0
        for info in files:
            name = info.filename
            problem = _name_problem(name)
            if problem:
                yield Skip(name, problem)
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                yield Skip(name, "symbolic link")
                continue
            if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits: a plain file
                yield Skip(name, "not a regular file (device, FIFO or socket)")
                continue
            if info.file_size > limits.max_file:
                yield Skip(name, f"larger than {limits.max_file} bytes")
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(limits.max_file + 1)  # declared sizes can lie
            except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:
                yield Skip(name, f"unreadable member: {exc}")
                continue
            total += len(data)
            if total > limits.max_total:
                raise ArchiveTooLargeError(
                    f"the archive unpacks to more than {limits.max_total} bytes "
                    "(CONVSCOPE_MAX_COLLECTION_BYTES)"
                )
            if len(data) > limits.max_file:
                yield Skip(name, f"larger than {limits.max_file} bytes")
                continue
            yield _check_data(name, data)


def _tar_members(archive: tarfile.TarFile, limits: Limits) -> Iterator[Item]:
    count = 0
    total = 0
    try:
        for info in archive:
            if info.isdir():
                continue
            count += 1
            if count > limits.max_members:
                raise ArchiveTooLargeError(
                    f"the archive has more than {limits.max_members} members "
                    "(CONVSCOPE_MAX_COLLECTION_MEMBERS)"
                )
            name = info.name
            total += max(0, info.size)
            if total > limits.max_total:
                raise ArchiveTooLargeError(
                    f"the archive unpacks to more than {limits.max_total} bytes "
                    "(CONVSCOPE_MAX_COLLECTION_BYTES)"
                )
            problem = _name_problem(name)
            if problem:
                yield Skip(name, problem)
                continue
            if info.issym() or info.islnk():
                yield Skip(name, "symbolic or hard link")
                continue
            if not info.isfile():
                yield Skip(name, "not a regular file (device, FIFO or socket)")
                continue
            if info.size > limits.max_file:
                yield Skip(name, f"larger than {limits.max_file} bytes")
                continue
            member = archive.extractfile(info)
            if member is None:
                yield Skip(name, "unreadable member")
                continue
            yield _check_data(name, member.read(limits.max_file + 1))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidArchiveError(f"the tar archive is truncated or corrupt: {exc}") from None


def resolve_folder(roots: list[Path], root: str, path: str) -> Path:
    """``path`` inside the allow-listed root named ``root`` (its folder name), resolved.

    Refuses unknown roots, absolute paths, ``..`` and anything (symlinks included) that
    resolves outside the root.
    """
    by_name = {r.name: r for r in roots}
    if root not in by_name:
        known = ", ".join(sorted(by_name)) or "none (CONVSCOPE_COLLECTION_ROOTS is empty)"
        raise CollectionPathError(
            f"unknown root {root!r}; expected one of {known} (GET /api/collections/roots)"
        )
    problem = _name_problem(path)
    if problem:
        raise CollectionPathError(f"path {path!r} refused: {problem}; expected a relative path")
    base = by_name[root].resolve()
    folder = (base / path).resolve()
    if folder != base and base not in folder.parents:
        raise CollectionPathError(f"path {path!r} resolves outside root {root!r}")
    if not folder.is_dir():
        raise CollectionPathError(f"path {path!r} under root {root!r} is not a folder")
    return folder


def from_folder(folder: Path, limits: Limits) -> Iterator[Item]:
    """Regular files under ``folder`` (recursively, sorted); links and devices are skipped."""
    count = 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for dirname in [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            dirnames.remove(dirname)  # never followed: it may lead outside the root
            yield Skip(str((Path(dirpath) / dirname).relative_to(folder)), "symbolic link")
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            name = str(path.relative_to(folder))
            try:
                info = path.lstat()
            except OSError as exc:
                yield Skip(name, f"unreadable: {exc.strerror}")
                continue
            if stat.S_ISLNK(info.st_mode):
                yield Skip(name, "symbolic link")
                continue
            if not stat.S_ISREG(info.st_mode):
                yield Skip(name, "not a regular file (device, FIFO or socket)")
                continue
            count += 1
            if count > limits.max_members:
                raise ArchiveTooLargeError(
                    f"the folder has more than {limits.max_members} files "
                    "(CONVSCOPE_MAX_COLLECTION_MEMBERS)"
                )
            if info.st_size > limits.max_file:
                yield Skip(name, f"larger than {limits.max_file} bytes")
                continue
            total += info.st_size
            if total > limits.max_total:
                raise ArchiveTooLargeError(
                    f"the folder holds more than {limits.max_total} bytes "
                    "(CONVSCOPE_MAX_COLLECTION_BYTES)"
                )
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                with os.fdopen(fd, "rb") as f:
                    data = f.read(limits.max_file + 1)
            except OSError as exc:
                yield Skip(name, f"unreadable: {exc.strerror}")
                continue
            yield _check_data(name, data)


def as_stream(data: bytes) -> BinaryIO:
    return io.BytesIO(data)
