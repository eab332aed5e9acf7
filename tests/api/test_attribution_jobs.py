"""Score-CAM and SmoothGrad run as jobs: 202 + job, progress, cancel, a cached result that
equals the synchronous computation."""

from __future__ import annotations

import io
import time

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from convscope.services.facade import Convscope
from tests.conftest import DEFAULT

M = f"/api/models/{DEFAULT}"


def _wait(client: TestClient, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_scorecam_is_a_job_whose_result_equals_the_direct_computation(
    client: TestClient, service: Convscope, samples
) -> None:
    url = f"{M}/images/{samples['cat']}/cam"
    params = {"method": "scorecam", "layer": "blocks.1", "class_index": 281}
    started = client.get(url, params=params)
    assert started.status_code == 202, started.text
    job = started.json()
    assert started.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["total"] == 24  # one forward pass per channel of blocks.1
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        text = "".join(stream.iter_text())
    states = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert states[-1]["state"] == "done" and states[-1]["step"] == 24
    # Asking again: the finished job's result, in any format, at once.
    start = time.perf_counter()
    npy = client.get(url, params=params | {"format": "npy"})
    assert npy.status_code == 200, npy.text
    assert time.perf_counter() - start < 2.0
    assert npy.headers["x-convscope-job"] == job["id"]
    body = client.get(url, params=params | {"format": "json"}).json()
    png = client.get(url, params=params)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert body["method"] == "scorecam" and body["class_index"] == 281
    direct = service.cam(
        DEFAULT,
        samples["cat"],
        layer="blocks.1",
        class_index=281,
        method="scorecam",
        fmt="npy",
        alpha=0.5,
    )
    heat = np.load(io.BytesIO(npy.content))
    assert np.allclose(heat, np.load(io.BytesIO(direct.content)), atol=1e-6)
    assert png.headers["x-convscope-scale"] == direct.headers["X-Convscope-Scale"]


def test_scorecam_job_can_be_cancelled(client: TestClient, samples) -> None:
    url = f"{M}/images/{samples['rocket']}/cam"
    started = client.get(url, params={"method": "scorecam"})  # conv_head: 1280 channels
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job_id}").json()["step"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    token = {"X-Job-Token": started.json()["token"]}  # the submitter's (services/compute/jobs.py)
    refused = client.delete(f"/api/jobs/{job_id}")  # not without it
    assert refused.status_code == 403 and refused.json()["code"] == "job_token_invalid"
    cancelled = client.delete(f"/api/jobs/{job_id}", headers=token)
    assert cancelled.status_code == 200, cancelled.text
    final = _wait(client, job_id)
    assert final["state"] == "cancelled" and 0 < final["step"] < 1280
    # Asking again starts it afresh (a cancelled job is not a cached result).
    again = client.get(url, params={"method": "scorecam"})
    assert again.status_code == 202 and again.json()["id"] != job_id
    again_token = {"X-Job-Token": again.json()["token"]}
    assert client.delete(f"/api/jobs/{again.json()['id']}", headers=again_token).status_code == 200
    assert _wait(client, again.json()["id"])["state"] in ("cancelled", "done")


def test_smoothgrad_is_a_job_with_progress_per_sample(
    client: TestClient, service: Convscope, samples
) -> None:
    url = f"{M}/images/{samples['astronaut']}/saliency"
    params = {"method": "smoothgrad", "samples": 16, "seed": 7, "format": "npy"}
    started = client.get(url, params=params)
    assert started.status_code == 202, started.text
    assert started.json()["total"] == 16
    assert _wait(client, started.json()["id"])["step"] == 16
    done = client.get(url, params=params)
    assert done.status_code == 200 and done.headers["content-type"] == "application/x-npy"
    direct = service.saliency(
        DEFAULT,
        samples["astronaut"],
        method="smoothgrad",
        class_index=None,
        fmt="npy",
        samples=16,
        noise=0.15,
        seed=7,
    )
    assert np.allclose(
        np.load(io.BytesIO(done.content)), np.load(io.BytesIO(direct.content)), atol=1e-7
    )


@pytest.mark.parametrize(
    ("path", "params"),
    [("cam", {"method": "gradcam"}), ("saliency", {"method": "vanilla"})],
)
def test_fast_methods_answer_at_once(client: TestClient, samples, path, params) -> None:
    response = client.get(f"{M}/images/{samples['cat']}/{path}", params=params)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_a_bad_job_request_is_refused_before_queueing(client: TestClient, samples) -> None:
    url = f"{M}/images/{samples['cat']}/cam"
    bad = client.get(url, params={"method": "scorecam", "layer": "nope"})
    assert bad.status_code == 404 and bad.json()["code"] == "unknown_layer"
    bad = client.get(url, params={"method": "scorecam", "class_index": 5000})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_parameter"
