"""``convscope expanded``, ``analyse`` and ``compare`` run the same services as the API."""

from pathlib import Path

import numpy as np
import orjson
import pytest

from convscope.cli import main
from convscope.services.facade import Convscope
from tests.conftest import DEFAULT


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONVSCOPE_WEIGHTS_DIR", str(tmp_path / "none"))


@pytest.mark.slow
def test_expanded_analyse_and_compare(
    tmp_path: Path, service: Convscope, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e.npy"
    assert main(["expanded", DEFAULT, "blocks.2", "4", "--onto", "blocks.1", "-o", str(out)]) == 0
    expected = service.expanded(DEFAULT, "blocks.2", 4, "blocks.1", "npy").content
    assert out.read_bytes() == expected and np.load(out).shape[0] == 24
    capsys.readouterr()
    assert main(["analyse", DEFAULT, "conv_stem"]) == 0
    table = capsys.readouterr().out
    body = orjson.loads(service.filter_analysis(DEFAULT, "conv_stem").content)
    for group, members in body["groups"].items():
        assert f"{group} ({len(members)})" in table
    assert main(["compare", DEFAULT, DEFAULT, "-o", str(tmp_path / "c.json")]) == 0
    result = orjson.loads((tmp_path / "c.json").read_bytes())
    assert result["first_weight_change"] is None and result["layers"][0]["layer"] == "conv_stem"
    assert main(["analyse", DEFAULT, "bn1"]) == 2
    assert "not_a_conv_layer" in capsys.readouterr().err
