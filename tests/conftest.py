"""Shared fixtures: one service and one app per session, each with its own data folder."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from convscope.config import Settings
from convscope.services.facade import Convscope

DEFAULT = "efficientnet_lite0"


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    empty = tmp_path_factory.mktemp("empty")
    return Settings(data_dir=tmp_path_factory.mktemp("data"), weights_dir=empty, models_dir=empty)


@pytest.fixture(scope="session")
def service(settings: Settings) -> Convscope:
    svc = Convscope(settings)
    svc.load_default()
    return svc


@pytest.fixture(scope="session")
def model(service: Convscope):  # type: ignore[no-untyped-def]
    return service.model(DEFAULT)


@pytest.fixture(scope="session")
def samples(service: Convscope) -> dict[str, str]:
    """Sample name -> image id."""
    return {r["name"]: r["id"] for r in service.list_images() if r["kind"] == "sample"}


@pytest.fixture(scope="session")
def client(service: Convscope, settings: Settings) -> Iterator[TestClient]:
    from convscope.api.app import create_app

    app = create_app(settings, service)
    with TestClient(app) as c:
        deadline = time.monotonic() + 60
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "default model never became ready"
            time.sleep(0.05)
        yield c


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def hooks_left(module) -> int:  # type: ignore[no-untyped-def]
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


@pytest.fixture
def tmp_data(tmp_path: Path) -> Path:
    return tmp_path
