"""Bad members of uploads, archives and server folders: refused as a whole or reported."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from convscope.errors import ArchiveTooLargeError, CollectionPathError, InvalidArchiveError
from convscope.services.collections.ingest import (
    Limits,
    Member,
    Skip,
    from_archive,
    from_files,
    from_folder,
    resolve_folder,
)
from tests.conftest import png_bytes

LIMITS = Limits(max_members=50, max_total=10_000_000, max_file=1_000_000)


def _zip(members: dict[str, bytes], **modes: int) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in modes:
                info.external_attr = modes[name] << 16
            z.writestr(info, data)
    buffer.seek(0)
    return buffer


def _tar(add) -> io.BytesIO:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as t:
        add(t)
    buffer.seek(0)
    return buffer


def _file(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def _by_name(items) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {i.name: ("ok" if isinstance(i, Member) else i.reason) for i in items}


def test_zip_members_checked() -> None:
    nested = _zip({"inner.png": png_bytes()}).getvalue()
    archive = _zip(
        {
            "good.png": png_bytes(seed=1),
            "/etc/abs.png": png_bytes(seed=2),
            "../up.png": png_bytes(seed=3),
            "link.png": b"good.png",
            "fifo": b"",
            "inner.zip": nested,
            "notes.txt": b"hello",
        },
        **{"link.png": 0o120777, "fifo": 0o010644},
    )
    found = _by_name(from_archive("a.zip", archive, LIMITS))
    assert found["good.png"] == "ok"
    assert found["notes.txt"] == "ok"  # decoded later: the image store reports it
    assert found["/etc/abs.png"] == "absolute path"
    assert found["../up.png"] == "path with '..'"
    assert found["link.png"] == "symbolic link"
    assert found["fifo"].startswith("not a regular file")
    assert found["inner.zip"].startswith("nested archive")


def test_tar_members_checked() -> None:
    def add(t: tarfile.TarFile) -> None:
        _file(t, "ok.png", png_bytes())
        _file(t, "/abs.png", png_bytes(seed=1))
        _file(t, "a/../../up.png", png_bytes(seed=2))
        link = tarfile.TarInfo("sym.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
        hard = tarfile.TarInfo("hard.png")
        hard.type, hard.linkname = tarfile.LNKTYPE, "ok.png"
        t.addfile(hard)
        device = tarfile.TarInfo("dev")
        device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
        t.addfile(device)
        _file(t, "x.tar.gz", b"\x1f\x8b\x08\x00")

    found = _by_name(from_archive("a.tgz", _tar(add), LIMITS))
    assert found == {
        "ok.png": "ok",
        "/abs.png": "absolute path",
        "a/../../up.png": "path with '..'",
        "sym.png": "symbolic or hard link",
        "hard.png": "symbolic or hard link",
        "dev": "not a regular file (device, FIFO or socket)",
        "x.tar.gz": "nested archive (archives inside archives are not opened)",
    }


def test_zip_bomb_refused_by_declared_and_by_read_size() -> None:
    zeros = b"\0" * 4_000_000
    bomb = _zip({f"z{i}.png": zeros for i in range(3)})  # 12 MB unpacked from a few KB
    assert len(bomb.getvalue()) < 100_000
    with pytest.raises(ArchiveTooLargeError):
        list(from_archive("bomb.zip", bomb, LIMITS))


def test_tar_bomb_and_too_many_members() -> None:
    def add(t: tarfile.TarFile) -> None:
        for i in range(3):
            _file(t, f"z{i}", b"\0" * 4_000_000)

    with pytest.raises(ArchiveTooLargeError) as err:
        list(from_archive("bomb.tgz", _tar(add), LIMITS))
    assert err.value.code == "archive_too_large"
    many = _zip({f"{i}.png": b"x" for i in range(51)})
    with pytest.raises(ArchiveTooLargeError):
        list(from_archive("many.zip", many, LIMITS))
    with pytest.raises(ArchiveTooLargeError):
        list(from_files([(str(i), io.BytesIO(b"x")) for i in range(51)], LIMITS))


def test_not_an_archive() -> None:
    with pytest.raises(InvalidArchiveError) as err:
        list(from_archive("x.zip", io.BytesIO(b"just text"), LIMITS))
    assert err.value.code == "invalid_archive"


def test_folder_members_and_roots(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes())
    (root / "sub" / "b.png").write_bytes(png_bytes(seed=1))
    (root / "link.png").symlink_to(root / "a.png")
    os.mkfifo(root / "pipe")
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    found = _by_name(from_folder(root, LIMITS))
    assert found == {
        "a.png": "ok",
        "sub/b.png": "ok",
        "link.png": "symbolic link",
        "pipe": "not a regular file (device, FIFO or socket)",
        "escape": "symbolic link",
    }
    assert resolve_folder([root], "photos", "sub") == (root / "sub").resolve()
    for root_name, path in (
        ("photos", "/etc"),
        ("photos", "../secret"),
        ("photos", "escape"),
        ("other", "."),
        ("photos", "a.png"),
    ):
        with pytest.raises(CollectionPathError) as err:
            resolve_folder([root], root_name, path)
        assert err.value.code == "collection_path_refused"


def test_large_uploaded_file_is_skipped() -> None:
    items = list(from_files([("big.png", io.BytesIO(b"x" * 1_000_001))], LIMITS))
    assert isinstance(items[0], Skip) and items[0].reason.startswith("larger than")
