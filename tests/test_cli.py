"""The CLI runs the same services as the API."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope.cli import main
from tests.conftest import png_bytes


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONVSCOPE_WEIGHTS_DIR", str(tmp_path / "none"))


def test_models_and_layers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "alexnet" in out and "unavailable" in out
    assert main(["layers", "efficientnet_lite0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "conv_stem" in lines[0] and "32x112x112" in lines[0] and "[filters]" in lines[0]


def test_filters_to_png_and_npy(tmp_path: Path, model) -> None:
    assert main(["filters", "efficientnet_lite0", "conv_stem", "-o", str(tmp_path / "f.png")]) == 0
    with Image.open(tmp_path / "f.png") as image:
        assert image.mode == "RGB"
    assert main(["filters", "efficientnet_lite0", "conv_stem", "-o", str(tmp_path / "f.npy")]) == 0
    weights = np.load(tmp_path / "f.npy")
    assert np.array_equal(weights, model.module.conv_stem.weight.detach().numpy())


def test_activations_for_a_sample_and_a_file(tmp_path: Path) -> None:
    out = tmp_path / "a.png"
    assert main(["activations", "efficientnet_lite0", "cat", "blocks.2", "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size[0] > 100
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(90, 70))
    npy = tmp_path / "a.npy"
    assert main(["activations", "efficientnet_lite0", str(photo), "conv_stem", "-o", str(npy)]) == 0
    assert np.load(io.BytesIO(npy.read_bytes())).shape == (32, 112, 112)


def test_errors_exit_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["filters", "efficientnet_lite0", "bn1", "-o", "/tmp/x.png"]) == 2
    assert "[not_a_conv_layer]" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "convscope"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    for command in ("serve", "models", "layers", "filters", "activations"):
        assert command in result.stdout


def test_optimize_and_cam(tmp_path: Path) -> None:
    out = tmp_path / "fv.png"
    assert (
        main(
            [
                "optimize",
                "efficientnet_lite0",
                "blocks.2",
                "3",
                "7",
                "--steps",
                "4",
                "--size",
                "40",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    with Image.open(out) as image:
        assert image.size == (2 * 40 + 6, 40 + 4)
    cam = tmp_path / "cam.npy"
    assert main(["cam", "efficientnet_lite0", "cat", "-o", str(cam)]) == 0
    assert np.load(cam).shape == (224, 224)
    sal = tmp_path / "sal.png"
    assert (
        main(["cam", "efficientnet_lite0", "coffee", "--saliency", "guided", "-o", str(sal)]) == 0
    )
    assert main(["optimize", "efficientnet_lite0", "blocks.2", "9999", "-o", str(out)]) == 2
