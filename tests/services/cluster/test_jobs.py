"""Jobs on a real local Ray cluster, through two API processes connected to it.

Submit through one process; follow the events, fetch the result and preview, and cancel
through the other: the job table is the cluster's, not a process's.
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
from PIL import Image

from tests.conftest import DEFAULT
from tests.server.servers import Server, start_all
from tests.services.cluster.conftest import ray_environ, start_cluster
from tests.services.cluster.localray import LocalRay

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


def test_cancel_through_the_other_process(apis) -> None:
    a, b = apis
    started = a.post(f"{M}/optimize", json={"objectives": ["conv_head:7"], "steps": 1000})
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    deadline = time.monotonic() + 90
    while b.get(f"/api/jobs/{job_id}").json()["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancelled = b.delete(f"/api/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["id"] == job_id
    final = _wait(a, job_id)
    assert final["state"] == "cancelled" and final["step"] < 1000
    late = a.get(f"/api/jobs/{job_id}/result.png")
    assert late.status_code == 409 and late.json()["code"] == "job_not_finished"


def test_unknown_job_is_404_on_every_process(apis) -> None:
    for client in apis:
        response = client.get("/api/jobs/nope")
        assert response.status_code == 404 and response.json()["code"] == "unknown_job"
