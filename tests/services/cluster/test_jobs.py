"""Jobs on a real local Ray cluster, through two API processes connected to it.

Submit through one process; follow the events, fetch the result and preview, and cancel
through the other: the job table is the cluster's, not a process's. Every job kind runs
there: feature visualisation, Score-CAM (an attribution job) and collection indexing (on
Ray Data from inside the job's task); cancel needs the submitter's control token, as in one
process.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import torch
from PIL import Image

from convscope.services.collections import indexfiles
from convscope.services.collections.service import BATCH
from convscope.services.facade import Convscope
from tests.conftest import DEFAULT
from tests.server.servers import Server, start_all
from tests.services.cluster.conftest import ray_environ, start_cluster
from tests.services.cluster.localray import LocalRay
from tests.services.collections.conftest import LAYERS, new_collection, variants
from tests.services.collections.test_index import _assert_equal

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

M = f"/api/models/{DEFAULT}"
QUICK = {"steps": 6, "size": 48, "seed": 3}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRay]:
    ray = start_cluster(cpus=2)
    try:
        yield ray
    finally:
        ray.stop()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-data")  # "the shared filesystem" of both processes


@pytest.fixture(scope="module")
def apis(
    cluster: LocalRay, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    logs = tmp_path_factory.mktemp("logs")
    with ray_environ():
        servers = [
            Server(
                data_dir,
                logs / f"api{i}.log",
                ray_address=cluster.address,
                torch_threads=1,
                max_running_jobs=1,
                models_poll_seconds=0,
            )
            for i in range(2)
        ]
    cluster.extra += [s.proc.pid for s in servers]
    try:
        start_all(servers)
        cluster.check_loopback()  # the API processes' Ray drivers listen too
        with (
            httpx.Client(base_url=servers[0].url, timeout=60) as a,
            httpx.Client(base_url=servers[1].url, timeout=60) as b,
        ):
            yield a, b
    finally:
        for server in servers:
            server.stop()


def _wait(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_submit_through_one_follow_and_fetch_through_the_other(apis, data_dir: Path) -> None:
    a, b = apis
    body = {"layer": "blocks.2", "channels": [5, 9], **QUICK}
    started = a.post(f"{M}/optimize", json=body)
    assert started.status_code == 202, started.text
    job = started.json()
    with b.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        text = "".join(stream.iter_text())
    states = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert "event: end" in text and states[-1]["state"] == "done", text[-500:]
    assert states[-1]["step"] == 6
    steps = [s["step"] for s in states]
    assert steps == sorted(steps)  # (fast steps coalesce into fewer events, as in one process)
    png = b.get(f"/api/jobs/{job['id']}/result.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(png.content)))
    assert image.shape[:2] == (48 + 4, 2 * 48 + 6) and image.std() > 5
    assert a.get(f"/api/jobs/{job['id']}/result.png").content == png.content
    # The result lives in the shared folder, not in any process's memory.
    assert (data_dir / "results" / f"{states[-1]['key']}.png").read_bytes() == png.content
    assert b.get(f"/api/jobs/{job['id']}/preview.png").status_code == 200
    # De-duplication by cache key works across processes: the same job, served as cached.
    again = b.post(f"{M}/optimize", json=body)
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert again.json()["cached"] is True


def test_cancel_through_the_other_process_needs_the_token(apis) -> None:
    a, b = apis
    started = a.post(f"{M}/optimize", json={"objectives": ["conv_head:7"], "steps": 1000})
    assert started.status_code == 202, started.text
    job_id, token = started.json()["id"], started.json()["token"]
    assert token and b.get(f"/api/jobs/{job_id}").json()["token"] is None  # never echoed
    deadline = time.monotonic() + 90
    while b.get(f"/api/jobs/{job_id}").json()["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for headers in ({}, {"X-Job-Token": "not-the-token"}):  # as in one process: 403
        refused = b.delete(f"/api/jobs/{job_id}", headers=headers)
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "job_token_invalid"
    assert b.get(f"/api/jobs/{job_id}").json()["state"] == "running"
    cancelled = b.delete(f"/api/jobs/{job_id}", headers={"X-Job-Token": f"other, {token}"})
    assert cancelled.status_code == 200 and cancelled.json()["id"] == job_id
    final = _wait(a, job_id)
    assert final["state"] == "cancelled" and final["step"] < 1000
    late = a.get(f"/api/jobs/{job_id}/result.png")
    assert late.status_code == 409 and late.json()["code"] == "job_not_finished"


def test_identical_submissions_each_get_a_token_across_processes(
    apis, samples: dict[str, str]
) -> None:
    """The job stops only when every submitter (here one through each process) cancelled."""
    a, b = apis
    url = f"{M}/images/{samples['rocket']}/deepdream"
    body = {"layer": "blocks.4", "steps": 500, "octaves": 6}
    first, second = a.post(url, json=body).json(), b.post(url, json=body)
    assert second.json()["id"] == first["id"] and second.json()["token"] != first["token"]
    job_id = first["id"]
    kept = b.delete(f"/api/jobs/{job_id}", headers={"X-Job-Token": first["token"]})
    assert kept.status_code == 200 and kept.json()["state"] in ("queued", "running")
    again = b.delete(f"/api/jobs/{job_id}", headers={"X-Job-Token": first["token"]})
    assert again.status_code == 403 and again.json()["code"] == "job_token_invalid"
    a.delete(f"/api/jobs/{job_id}", headers={"X-Job-Token": second.json()["token"]})
    assert _wait(b, job_id)["state"] == "cancelled"


def test_scorecam_job_through_one_result_through_the_other(
    apis, service: Convscope, samples: dict[str, str]
) -> None:
    a, b = apis
    url = f"{M}/images/{samples['cat']}/cam"
    params = {"method": "scorecam", "layer": "blocks.1", "class_index": 281}
    started = a.get(url, params=params)
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["total"] == 24 and job["token"]
    assert _wait(b, job["id"])["state"] == "done"
    # Asking again through the other process: the cluster's job, its NPZ result rendered.
    npy = b.get(url, params=params | {"format": "npy"})
    assert npy.status_code == 200, npy.text
    assert npy.headers["x-convscope-job"] == job["id"]
    direct = service.cam(
        DEFAULT, samples["cat"], layer="blocks.1", class_index=281, method="scorecam", fmt="npy"
    )
    np.testing.assert_allclose(
        np.load(io.BytesIO(npy.content)), np.load(io.BytesIO(direct.content)), atol=1e-5
    )
    assert b.get(url, params=params).headers["content-type"] == "image/png"


def test_scorecam_cancel_through_the_other_process(apis, samples: dict[str, str]) -> None:
    a, b = apis
    url = f"{M}/images/{samples['coffee']}/cam"
    started = a.get(url, params={"method": "scorecam", "layer": "conv_head"})  # 1280 passes
    assert started.status_code == 202, started.text
    job = started.json()
    refused = b.delete(f"/api/jobs/{job['id']}")
    assert refused.status_code == 403 and refused.json()["code"] == "job_token_invalid"
    cancelled = b.delete(f"/api/jobs/{job['id']}", headers={"X-Job-Token": job["token"]})
    assert cancelled.status_code == 200
    final = _wait(a, job["id"])
    assert final["state"] == "cancelled" and final["step"] < 1280


def test_index_job_through_one_followed_through_the_other(
    apis, service: Convscope, data_dir: Path
) -> None:
    a, b = apis
    photos = variants(service, 24, seed=21)
    cid = a.post("/api/collections", json={"name": "cluster index"}).json()["id"]
    files = [("files", (n, d, "image/jpeg")) for n, d in photos]
    assert b.post(f"/api/collections/{cid}/images", files=files).json()["added"] == 24
    started = a.post(
        f"/api/models/{DEFAULT}/collections/{cid}/index", json={"layers": LAYERS, "k": 8}
    )
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["token"] and job["label"] == "index cluster index"
    final = _wait(b, job["id"])
    assert final["state"] == "done", final
    summary = b.get(f"/api/jobs/{job['id']}/summary")
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert body["collection"] == cid and body["images"] == 24 and body["new"] == 24
    assert body["layers"] == len(LAYERS) and body["skipped"] == []
    assert sum(body["nodes"].values()) == -(-24 // BATCH)  # the batches, on Ray Data
    # The index equals the one-process index of the same images, and both processes serve it.
    # Same torch threads as the pool's actors (the servers' 1): the same float sums.
    reference = new_collection(service, photos, "cluster index reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        service.index_now(DEFAULT, reference, LAYERS, 8)
    finally:
        torch.set_num_threads(threads)
    model = service.model(DEFAULT)
    expected = service.collections.reader(model, reference)
    key = service.collections.model_key(model)
    built = indexfiles.open_current(data_dir / "collections" / cid / "indexes" / key)
    assert built is not None and built.images == expected.images
    _assert_equal(built.partial(), expected.partial())
    for layer in LAYERS:
        np.testing.assert_array_equal(built.scores(layer), expected.scores(layer))
    path = f"/api/models/{DEFAULT}/collections/{cid}/examples/bn2?channel=3&k=4"
    assert a.get(path).json() == b.get(path).json()
    local = service.dataset_examples(DEFAULT, reference, "bn2", 3, 4, "max", "json")
    assert a.get(path).json() == orjson.loads(local.content)


def test_unknown_job_is_404_on_every_process(apis) -> None:
    for client in apis:
        response = client.get("/api/jobs/nope")
        assert response.status_code == 404 and response.json()["code"] == "unknown_job"
