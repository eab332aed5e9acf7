"""The three commands: create a collection from a folder, index it, draw its examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from convscope.cli import main
from convscope.services.facade import Convscope


def test_create_index_examples(
    service: Convscope,
    photos: list[tuple[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in photos[:5]:
        (folder / name).write_bytes(data)
    (folder / "readme.txt").write_text("not an image")
    monkeypatch.setenv("CONVSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONVSCOPE_BUILTIN_COLLECTION", "false")

    assert main(["collections", "create", "mine", str(folder)]) == 0
    out = capsys.readouterr()
    assert "mine  5 images" in out.out and "readme.txt" in out.err

    assert main(["index", "efficientnet_lite0", "mine", "--layers", "blocks.2", "-k", "4"]) == 0
    out = capsys.readouterr()
    assert "indexed 5 images (5 new) on 1 layers" in out.out
    assert "5/5 images" in out.err  # the progress bar's last state

    png = tmp_path / "ex.png"
    assert (
        main(["examples", "efficientnet_lite0", "mine", "blocks.2", "3", "-k", "4", "-o", str(png)])
        == 0
    )
    with Image.open(png) as drawn:
        assert drawn.size[0] > 96

    assert main(["examples", "efficientnet_lite0", "nope", "blocks.2", "3", "-o", str(png)]) == 2
    assert "unknown_collection" in capsys.readouterr().err
