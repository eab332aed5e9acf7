"""Fixtures for the server tests: an app with uploads on, and helpers shared by modules."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from convscope.config import Settings
from convscope.services.facade import Convscope

TOKEN = "hardening-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def hard_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("hard-data")
    return Settings(
        data_dir=data,
        weights_dir=tmp_path_factory.mktemp("hard-weights"),
        models_dir=data / "models",
        model_upload_token=TOKEN,
        models_poll_seconds=0,
    )


@pytest.fixture(scope="session")
def hard_service(hard_settings: Settings) -> Convscope:
    service = Convscope(hard_settings)
    service.load_default()
    return service


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "default model never became ready"
        time.sleep(0.05)


@pytest.fixture(scope="session")
def hard_client(hard_settings: Settings, hard_service: Convscope) -> Iterator[TestClient]:
    """The app with model upload on; server errors raise in the test (never hidden as 500)."""
    from convscope.api.app import create_app

    with TestClient(create_app(hard_settings, hard_service)) as client:
        wait_ready(client)
        yield client


def assert_error(response, status: int, code: str, *, contains: str = "") -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert body["code"] == code, body
    assert contains.lower() in body["detail"].lower(), body
    return body


def assert_serving(client: TestClient) -> None:
    """Still healthy and still computing after whatever the test threw at it."""
    assert client.get("/healthz").json()["status"] == "ok"
    models = client.get("/api/models")
    assert models.status_code == 200
    images = client.get("/api/images").json()
    cat = next(i["id"] for i in images if i["name"] == "cat")
    top = client.get(f"/api/models/efficientnet_lite0/images/{cat}/predictions", params={"top": 1})
    assert top.status_code == 200 and top.json()[0]["probability"] > 0
