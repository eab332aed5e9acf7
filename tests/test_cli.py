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


# --- issue 13: quiet, errors that name commands, formats from -o, plain help, sample names


def _run(*argv: str, env_dir: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script in a fresh process (so logging starts unconfigured)."""
    import os

    exe = Path(sys.executable).parent / "convscope"
    env = os.environ | {
        "CONVSCOPE_DATA_DIR": str(env_dir / "data"),
        "CONVSCOPE_WEIGHTS_DIR": str(env_dir / "none"),
    }
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env, check=False)


def test_quiet_by_default_and_verbose_on_request(tmp_path: Path) -> None:
    quiet = _run("layers", "efficientnet_lite0", env_dir=tmp_path)
    assert quiet.returncode == 0 and "conv_stem" in quiet.stdout
    assert quiet.stderr == ""  # no "info ... loaded model" line
    for argv in (("-v", "layers", "efficientnet_lite0"), ("layers", "-v", "efficientnet_lite0")):
        loud = _run(*argv, env_dir=tmp_path)
        assert loud.returncode == 0 and "loaded model efficientnet_lite0" in loud.stderr


def test_errors_name_the_cli_command_to_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["filters", "efficientnet_lite0", "nope", "-o", "/tmp/x.png"]) == 2
    err = capsys.readouterr().err
    assert "`convscope layers efficientnet_lite0`" in err and "/api/" not in err
    assert main(["layers", "nope"]) == 2
    err = capsys.readouterr().err
    assert "`convscope models`" in err and "/api/" not in err


@pytest.mark.parametrize("name", ["out.gif", "out", "out.jpeg"])
def test_an_unknown_output_extension_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out = tmp_path / name
    assert main(["filters", "efficientnet_lite0", "conv_stem", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "must be one of .png, .json, .npy" in err and not out.exists()
    assert main(["optimize", "efficientnet_lite0", "blocks.2", "1", "-o", str(tmp_path / "a.npy")])
    assert "must be one of .png" in capsys.readouterr().err
    saliency = ["cam", "efficientnet_lite0", "cat", "--saliency", "vanilla"]
    assert main([*saliency, "-o", str(tmp_path / "s.json")]) == 2
    assert "must be one of .png, .npy" in capsys.readouterr().err


def test_json_output_follows_the_extension(tmp_path: Path) -> None:
    import json

    out = tmp_path / "maps.json"
    argv = ["activations", "efficientnet_lite0", "cat", "blocks.2", "--limit", "2", "-o"]
    assert main([*argv, str(out)]) == 0
    body = json.loads(out.read_text())
    assert body["layer"] == "blocks.2" and len(body["channels"]) == 2


def test_a_missing_image_file_says_what_is_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "photo.jpg")
    for argv in (
        ["activations", "efficientnet_lite0", missing, "conv_stem", "-o", str(tmp_path / "a.png")],
        ["cam", "efficientnet_lite0", missing, "-o", str(tmp_path / "c.png")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "neither a file nor a sample image" in err and "cat, coffee" in err
        assert "Errno" not in err


def test_sample_names_with_the_sample_prefix(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert main(["activations", "efficientnet_lite0", "sample:cat", "conv_stem", "-o", str(a)]) == 0
    assert main(["activations", "efficientnet_lite0", "cat", "conv_stem", "-o", str(b)]) == 0
    assert np.array_equal(np.load(a), np.load(b))


def test_help_is_plain_text() -> None:
    import re

    parser_help = subprocess.run(
        [str(Path(sys.executable).parent / "convscope"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("convert", "activations", "cam"):
        assert command in parser_help
    for argv in ([], ["convert"], ["filters"], ["cam"]):
        text = subprocess.run(
            [str(Path(sys.executable).parent / "convscope"), *argv, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "``" not in text and not re.search(r":(class|func|meth|data):`", text), argv
