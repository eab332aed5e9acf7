"""Feature visualisation jobs, Grad-CAM and saliency over HTTP."""

import io
import time

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import DEFAULT

M = f"/api/models/{DEFAULT}"
QUICK = {"steps": 6, "size": 48, "seed": 3}


def _wait(client: TestClient, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_optimize_job_runs_streams_progress_and_is_cached(client: TestClient) -> None:
    body = {"layer": "blocks.2", "channels": [5, 9], **QUICK}
    started = client.post(f"{M}/optimize", json=body)
    assert started.status_code == 202, started.text
    job = started.json()
    assert started.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["total"] == 6 and job["state"] in ("queued", "running")  # 202: not done yet
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        text = "".join(stream.iter_text())
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    states = [orjson.loads(e) for e in events]
    assert "event: end" in text and states[-1]["state"] == "done"
    assert states[-1]["step"] == 6
    png = client.get(f"/api/jobs/{job['id']}/result.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(png.content)))
    assert image.shape[:2] == (48 + 4, 2 * 48 + 6)  # two images in one row, 2 px padding
    assert image.std() > 5  # not a flat image
    assert client.get(f"/api/jobs/{job['id']}/preview.png").status_code == 200
    start = time.perf_counter()
    again = client.post(f"{M}/optimize", json=body)
    assert again.status_code == 200 and again.json()["state"] == "done"
    assert again.json()["cached"] is True
    assert time.perf_counter() - start < 1.0
    assert client.get(f"/api/jobs/{again.json()['id']}/result.png").content == png.content


def test_optimize_job_can_be_cancelled(client: TestClient) -> None:
    started = client.post(
        f"{M}/optimize", json={"objectives": ["conv_head:7"], "steps": 1000, "size": 160}
    )
    assert started.status_code == 202
    job_id = started.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job_id}").json()["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Without the submitter's token, or with another's: 403, and the job runs on.
    for headers in ({}, {"X-Job-Token": "not-the-token"}):
        refused = client.delete(f"/api/jobs/{job_id}", headers=headers)
        assert refused.status_code == 403 and refused.json()["code"] == "job_token_invalid"
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "running"
    assert client.get(f"/api/jobs/{job_id}").json()["token"] is None  # never echoed
    token = started.json()["token"]
    cancelled = client.delete(f"/api/jobs/{job_id}", headers={"X-Job-Token": token})
    assert cancelled.status_code == 200
    final = _wait(client, job_id)
    assert final["state"] == "cancelled" and final["step"] < 1000
    late = client.get(f"/api/jobs/{job_id}/result.png")
    assert late.status_code == 409 and late.json()["code"] == "job_not_finished"


def test_identical_optimize_requests_each_get_a_token(client: TestClient) -> None:
    body = {"objectives": ["conv_head:11"], "steps": 1000, "size": 64}
    first = client.post(f"{M}/optimize", json=body)
    second = client.post(f"{M}/optimize", json=body)  # while the first is queued or running
    assert first.status_code == second.status_code == 202, second.text
    job_id = first.json()["id"]
    assert second.json()["id"] == job_id  # one job for both
    tokens = [first.json()["token"], second.json()["token"]]
    assert all(tokens) and tokens[0] != tokens[1]
    # One submitter's cancel leaves the job to the other (services/compute/jobs.py cancel).
    kept = client.delete(f"/api/jobs/{job_id}", headers={"X-Job-Token": tokens[0]})
    assert kept.status_code == 200 and kept.json()["state"] in ("queued", "running")
    seen = kept.json()["step"]
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job_id}").json()["step"] < seen + 2:  # it runs on
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "running"
    spent = client.delete(f"/api/jobs/{job_id}", headers={"X-Job-Token": tokens[0]})
    assert spent.status_code == 403 and spent.json()["code"] == "job_token_invalid"
    # Both tokens, as one client that submitted twice sends them: the job stops.
    both = client.delete(f"/api/jobs/{job_id}", headers={"X-Job-Token": ",".join(tokens)})
    assert both.status_code == 200
    final = _wait(client, job_id)
    assert final["state"] == "cancelled" and final["step"] < 1000


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({"objectives": ["blocks.99:1"]}, 404, "unknown_layer", "layers"),
        ({"layer": "blocks.2", "channels": [10_000]}, 422, "invalid_parameter", "channel"),
        ({"objectives": ["blocks.2:1 +"]}, 422, "invalid_parameter", "expected terms like"),
        (
            {"layer": "blocks.2", "channels": [1], "steps": 100_000},
            422,
            "invalid_parameter",
            "steps",
        ),
        ({"layer": "blocks.2", "channels": [1], "size": 4096}, 422, "invalid_parameter", "size"),
        ({}, 422, "invalid_parameter", "objectives"),
        (
            {"layer": "blocks.2", "channels": [1], "param": "wavelet"},
            422,
            "invalid_parameter",
            "param",
        ),
    ],
)
def test_bad_objectives_get_a_clear_422_or_404(
    client: TestClient, body: dict, status: int, code: str, fragment: str
) -> None:
    response = client.post(f"{M}/optimize", json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["code"] == code
    assert fragment in payload["detail"]


def test_unknown_job(client: TestClient) -> None:
    response = client.get("/api/jobs/nope")
    assert response.status_code == 404 and response.json()["code"] == "unknown_job"


def test_deepdream_job(client: TestClient, samples) -> None:
    started = client.post(
        f"{M}/images/{samples['cat']}/deepdream",
        json={"layer": "blocks.3", "steps": 2, "octaves": 1},
    )
    assert started.status_code == 202, started.text  # a fresh data folder: nothing cached
    assert _wait(client, started.json()["id"])["state"] == "done"
    png = client.get(f"/api/jobs/{started.json()['id']}/result.png")
    assert np.asarray(Image.open(io.BytesIO(png.content))).shape == (224, 224, 3)


def test_gradcam_png_npy_json(client: TestClient, samples) -> None:
    url = f"{M}/images/{samples['cat']}/cam"
    png = client.get(url)
    assert png.status_code == 200, png.text
    assert np.asarray(Image.open(io.BytesIO(png.content))).shape == (224, 224, 3)
    top1 = client.get(f"{M}/images/{samples['cat']}/predictions?top=1").json()[0]["index"]
    assert int(png.headers["x-convscope-class"]) == top1
    heat = np.load(io.BytesIO(client.get(url, params={"format": "npy"}).content))
    assert heat.shape == (224, 224) and heat.min() >= 0 and heat.max() <= 1
    info = client.get(url, params={"format": "json", "method": "gradcampp", "class_index": 285})
    body = info.json()
    assert body["class_index"] == 285 and body["label"] == "Egyptian cat"
    assert body["method"] == "gradcampp" and len(body["cam"]) == 7
    bad = client.get(url, params={"class_index": 1000})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_parameter"
    assert "class_index < 1000" in bad.json()["detail"]
    bad_layer = client.get(url, params={"layer": "nope"})
    assert bad_layer.status_code == 404 and bad_layer.json()["code"] == "unknown_layer"


def test_saliency_png_and_npy(client: TestClient, samples) -> None:
    url = f"{M}/images/{samples['coffee']}/saliency"
    vanilla = np.load(io.BytesIO(client.get(url, params={"format": "npy"}).content))
    guided = np.load(
        io.BytesIO(client.get(url, params={"format": "npy", "method": "guided"}).content)
    )
    assert vanilla.shape == guided.shape == (224, 224)
    assert vanilla.min() >= 0 and not np.allclose(vanilla, guided)
    # SmoothGrad is a job (tests/api/test_attribution_jobs.py): 202, then the result.
    first = client.get(url, params={"method": "smoothgrad", "samples": 2})
    assert first.status_code in (200, 202), first.text
    if first.status_code == 202:
        assert _wait(client, first.json()["id"])["state"] == "done"
    png = client.get(url, params={"method": "smoothgrad", "samples": 2})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
