"""Metrics, structured logs with request ids, security headers and CORS."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from convscope.api.logs import JsonFormatter, KeyValueFormatter, RequestIdFilter
from convscope.config import Settings
from convscope.services.facade import Convscope
from tests.server.conftest import wait_ready


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")) and want in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}} in /metrics")


def test_metrics_by_route_template(hard_client: TestClient) -> None:
    cat = next(i["id"] for i in hard_client.get("/api/images").json() if i["name"] == "cat")
    for _ in range(2):
        hard_client.get(f"/api/models/efficientnet_lite0/images/{cat}/predictions")
    hard_client.get("/api/models/nope/layers")
    hard_client.get("/no/such/path")
    response = hard_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = "/api/models/{model}/images/{image_id}/predictions"
    assert _metric(text, "convscope_http_requests_total", route=route, status="200") >= 2
    assert _metric(text, "convscope_http_request_duration_seconds_count", route=route) >= 2
    assert (
        _metric(
            text, "convscope_http_requests_total", route="/api/models/{model}/layers", status="404"
        )
        >= 1
    )
    assert cat not in text  # raw paths never become labels
    for name in (
        "convscope_http_requests_in_flight",
        "convscope_compute_queued",
        "convscope_compute_running",
        "convscope_admitted_requests",
        "convscope_ready",
    ):
        _metric(text, name)
    for stage in ("admission", "compute"):
        _metric(text, "convscope_rejected_requests_total", stage=stage)
    assert _metric(text, "convscope_cache_hits_total", cache="activations") >= 1
    assert _metric(text, "convscope_cache_misses_total", cache="activations") >= 1
    _metric(text, "convscope_model_load_failures_total")


def test_each_app_has_its_own_metrics(hard_service: Convscope, tmp_path: Path) -> None:
    from convscope.api.app import create_app

    settings = Settings(data_dir=tmp_path, models_dir=tmp_path / "m")
    apps = [create_app(settings, hard_service) for _ in range(2)]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        for _ in range(3):
            first.get("/healthz")
        one = _metric(
            first.get("/metrics").text,
            "convscope_http_requests_total",
            route="/healthz",
            status="200",
        )
        assert one == 3
        assert 'route="/healthz"' not in second.get("/metrics").text
    off = create_app(Settings(data_dir=tmp_path, metrics_enabled=False), hard_service)
    with TestClient(off) as client:
        assert client.get("/metrics").status_code == 404


def test_access_log_carries_the_request_id(
    hard_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="convscope.access"):
        response = hard_client.get("/api/models/nope/layers", headers={"X-Request-Id": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    record = next(r for r in caplog.records if r.name == "convscope.access")
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-42"
    assert line["route"] == "/api/models/{model}/layers" and line["status"] == 404
    assert line["level"] == "info" and line["duration_ms"] >= 0
    text = KeyValueFormatter().format(record)
    assert "request_id=req-42" in text and "status=404" in text
    # A hostile request id is replaced, never written into logs.
    evil = hard_client.get("/healthz", headers={"X-Request-Id": 'a"b c' + "x" * 100})
    assert evil.headers["x-request-id"].isalnum()


def test_security_headers_everywhere(hard_client: TestClient) -> None:
    for path in ("/healthz", "/api/models", "/api/models/nope", "/metrics", "/"):
        response = hard_client.get(path)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-request-id"]


def test_cors_is_off_by_default(hard_client: TestClient) -> None:
    response = hard_client.get("/api/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = hard_client.options(
        "/api/images",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_only_the_listed_origins(hard_service: Convscope, tmp_path: Path) -> None:
    from convscope.api.app import create_app

    settings = Settings(data_dir=tmp_path, cors_origins=["https://ui.example"])
    with TestClient(create_app(settings, hard_service)) as client:
        wait_ready(client)
        ok = client.get("/api/models", headers={"Origin": "https://ui.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ui.example"
        other = client.get("/api/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = client.options(
            "/api/images",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
