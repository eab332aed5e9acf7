"""CONVSCOPE_DEVICE is honoured: CPU here; CUDA checked where a GPU is present."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from convscope.config import Settings
from convscope.errors import ConvscopeError
from convscope.services.compute.runtime import available_cpus, cgroup_cpu_limit, configure_threads
from convscope.services.facade import Convscope
from convscope.services.inspection.capture import capture
from convscope.services.models.device import resolve_device
from convscope.services.models.registry import ModelRegistry
from tests.conftest import DEFAULT


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_and_auto_resolve_to_cpu_without_cuda(no_cuda: None) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_cuda_is_a_clear_error(no_cuda: None) -> None:
    for setting in ("cuda", "cuda:0"):
        with pytest.raises(ConvscopeError, match="CUDA is not available") as info:
            resolve_device(setting)
        assert f"CONVSCOPE_DEVICE={setting!r}" in info.value.detail
        assert "'cpu' or 'auto'" in info.value.detail


@pytest.mark.parametrize("setting", ["gpu", "mps", "cuda0", ""])
def test_unknown_device_names_the_choices(setting: str) -> None:
    with pytest.raises(ConvscopeError) as info:
        resolve_device(setting)
    assert info.value.detail == (
        f"CONVSCOPE_DEVICE: expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {setting!r}"
    )


def test_registry_refuses_cuda_without_cuda(tmp_path, no_cuda: None) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConvscopeError, match="CUDA is not available"):
        ModelRegistry(Settings(data_dir=tmp_path, device="cuda"))


def test_auto_loads_the_model_on_the_cpu_here(tmp_path, no_cuda: None) -> None:  # type: ignore[no-untyped-def]
    registry = ModelRegistry(Settings(data_dir=tmp_path, device="auto"))
    model = registry.get(DEFAULT)
    assert model.device == torch.device("cpu")
    assert {p.device.type for p in model.module.parameters()} == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_captures_to_cpu_tensors_equal_to_the_cpu_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cpu = ModelRegistry(Settings(data_dir=tmp_path, device="cpu")).get(DEFAULT)
    gpu = ModelRegistry(Settings(data_dir=tmp_path, device="cuda")).get(DEFAULT)
    assert next(gpu.module.parameters()).is_cuda
    x = torch.rand(3, 224, 224) * 2 - 1
    expected, got = capture(cpu, x), capture(gpu, x)
    assert got.logits.device.type == "cpu" and got.logits.argmax() == expected.logits.argmax()
    for name in ("conv_stem", "blocks.4", "conv_head"):
        assert got.maps[name].device.type == "cpu"
        assert torch.allclose(got.maps[name], expected.maps[name], atol=1e-3, rtol=1e-3), name


def test_torch_threads_follow_the_setting_or_the_available_cores() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert configure_threads(0) == available_cpus() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_cgroup_quota_caps_the_cores(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_load_default_freezes_the_heap_and_collects_again_even_when_it_fails(
    tmp_path: Path,
) -> None:
    gc.disable()  # as `convscope serve` does while it starts
    try:
        empty = tmp_path / "empty"
        empty.mkdir()
        settings = Settings(
            data_dir=tmp_path / "data",
            weights_dir=empty,
            models_dir=empty,
            default_model="no_such_model",
        )
        with pytest.raises(ConvscopeError, match="no_such_model"):
            Convscope(settings).load_default()
        assert gc.isenabled()
    finally:
        gc.enable()
    assert gc.get_freeze_count() > 10_000  # torch, timm, FastAPI: out of full collections
