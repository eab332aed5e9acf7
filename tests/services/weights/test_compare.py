"""Comparing two checkpoints: identical, one layer perturbed, another architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convscope.config import Settings
from convscope.errors import ArchitectureMismatchError
from convscope.services.facade import Convscope
from convscope.services.weights.compare import linear_cka
from tests.conftest import DEFAULT, hooks_left
from tests.services.weights.checkpoints import (
    OTHER_HEAD,
    PERTURBED,
    PERTURBED_LAYER,
    RESNET,
    write_checkpoints,
)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, model) -> Convscope:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("compare")
    write_checkpoints(root / "models", model.module)
    empty = root / "empty"
    empty.mkdir()
    svc = Convscope(Settings(data_dir=root / "data", models_dir=root / "models", weights_dir=empty))
    svc.load_default()
    return svc


@pytest.fixture(scope="module")
def cat(two: Convscope) -> str:
    return next(r["id"] for r in two.list_images() if r["name"] == "cat")


def test_identical_models_have_cka_one_and_no_change_anywhere(two: Convscope, cat: str) -> None:
    result = two.compare_models(DEFAULT, DEFAULT, cat)
    rows = result["layers"]
    assert result["first_weight_change"] is None and result["first_activation_change"] is None
    weighted = [r for r in rows if "weight_change" in r]
    module = two.model(DEFAULT).module
    own = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]
    assert len(weighted) == len(own) > 90  # every conv, batch norm and the classifier
    assert all(r["weight_change"] == 0.0 for r in weighted)
    assert all(
        r["filter_cosine"] == pytest.approx(1.0, abs=1e-12)
        for r in weighted
        if r["filter_cosine"] is not None
    )
    spatial = [r for r in rows if r.get("cka") is not None]
    assert len(spatial) > 100
    assert all(r["cka"] == pytest.approx(1.0, abs=1e-9) for r in spatial)
    assert all(r["activation_change_max"] == 0.0 for r in rows if "activation_change_max" in r)
    assert hooks_left(two.model(DEFAULT).module) == 0


def test_one_perturbed_layer_changes_exactly_from_that_layer_on(two: Convscope, cat: str) -> None:
    result = two.compare_models(DEFAULT, PERTURBED, cat)
    rows = {r["layer"]: r for r in result["layers"]}
    changed = [name for name, r in rows.items() if r.get("weight_change", 0.0) > 0]
    assert changed == [PERTURBED_LAYER]
    assert rows[PERTURBED_LAYER]["weight_change"] == pytest.approx(0.05, rel=0.2)
    assert result["first_weight_change"] == PERTURBED_LAYER
    assert result["first_activation_change"] == PERTURBED_LAYER
    # Every module that finished before the perturbed conv sees identical activations, the
    # conv itself and what follows it do not.
    finished = {info.name: info.finished for info in two.model(DEFAULT).layers}
    at = finished[PERTURBED_LAYER]
    for name, row in rows.items():
        if "activation_change_max" not in row:
            continue
        if finished[name] < at:
            assert row["activation_change_max"] == 0.0, name
            assert row["cka"] is None or row["cka"] == pytest.approx(1.0, abs=1e-9), name
        elif name in {PERTURBED_LAYER, "blocks.3.1", "blocks.4", "conv_head", "output"}:
            assert row["activation_change_max"] > 1e-4, name
    assert rows["blocks.6"]["cka"] < 1.0


def test_reference_cka_of_known_representations() -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 8, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(
        1.0
    )  # invariant to rotation, scale, shift
    y = torch.randn(50, 8, dtype=torch.float64)
    # Kornblith et al.: CKA = ||Y^T X||^2 / (||X^T X|| ||Y^T Y||) after centring.
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = (yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert linear_cka(x, y) == pytest.approx(float(expected))
    assert linear_cka(x[:4], y[:4, :3]) == pytest.approx(
        float(
            ((y[:4, :3] - y[:4, :3].mean(0)).T @ (x[:4] - x[:4].mean(0))).norm() ** 2
            / (
                ((x[:4] - x[:4].mean(0)).T @ (x[:4] - x[:4].mean(0))).norm()
                * ((y[:4, :3] - y[:4, :3].mean(0)).T @ (y[:4, :3] - y[:4, :3].mean(0))).norm()
            )
        )
    )  # the N x N branch
    assert linear_cka(x[:1], y[:1]) is None


@pytest.mark.parametrize(("other", "layer"), [(OTHER_HEAD, "classifier"), (RESNET, "conv_stem")])
def test_different_architectures_name_the_first_mismatching_layer(
    two: Convscope, other: str, layer: str
) -> None:
    with pytest.raises(ArchitectureMismatchError) as info:
        two.compare_models(DEFAULT, other)
    assert info.value.extra["layer"] == layer
    assert repr(layer) in info.value.detail


def test_weights_only_without_an_image(two: Convscope, tmp_path: Path) -> None:
    result = two.compare_models(PERTURBED, DEFAULT)
    assert result["image"] is None and result["first_activation_change"] is None
    assert all("cka" not in r for r in result["layers"])
    assert result["first_weight_change"] == PERTURBED_LAYER
