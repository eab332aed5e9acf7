"""``convscope serve --cluster``: the same app on Ray Serve with 2 replicas passes the core
API tests (models, layers, filters, activations, predictions), imported from tests/api and
run here against the Serve proxy instead of the in-process client."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.api.test_api import (  # noqa: F401  (collected here, against Serve)
    test_activation_npy_equals_the_model_run_on_the_served_input,
    test_activation_png_json_and_options,
    test_channel_stats_and_top_k,
    test_filters_npy_and_json_values_are_the_weights,
    test_filters_png_grid_decodes_to_the_tiles_json_describes,
    test_health_and_readiness,
    test_layers,
    test_models_listing,
    test_predictions,
)
from tests.services.cluster.conftest import ray_environ, start_cluster
from tests.services.cluster.localray import LocalRay, free_port, wait_for

# Replicas use the default thread count, like the reference model in this process: the
# activations compared bit for bit come from the same kernels.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

REPLICAS = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRay]:
    ray = start_cluster(cpus=2)
    try:
        yield ray
    finally:
        ray.stop()


def _replicas(cluster: LocalRay) -> list[int]:
    found = []
    for pid in cluster.pids():
        try:
            if "ServeReplica:convscope" in " ".join(psutil.Process(pid).cmdline()):
                found.append(pid)
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="module")
def serve_url(cluster: LocalRay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    data = tmp_path_factory.mktemp("serve-data")
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    exe = shutil.which("convscope") or str(Path(sys.executable).with_name("convscope"))
    with ray_environ():
        env = dict(__import__("os").environ)
    env |= {
        "CONVSCOPE_DATA_DIR": str(data),
        "CONVSCOPE_MODELS_POLL_SECONDS": "0",
    }
    with log.open("wb") as out:
        driver = subprocess.Popen(
            [exe, "serve", "--cluster", cluster.address, "--replicas", str(REPLICAS)]  # noqa: RUF005
            + ["--replica-cpus", "0.5", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    cluster.extra.append(driver.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: len(_replicas(cluster)) == REPLICAS, 150, "two Serve replicas")
        cluster.check_loopback()  # the Serve proxy, controller and replicas too

        def ready_in_a_row() -> bool:
            for _ in range(10):  # requests spread over the replicas: all of them ready
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
                        return False
                except httpx.TransportError:
                    return False
            return True

        wait_for(ready_in_a_row, 150, "every replica ready", every=0.5)
        cluster.check_loopback()
        yield url
    except BaseException:
        sys.stderr.write(log.read_text()[-4000:])
        raise
    finally:
        driver.terminate()  # the driver removes the application, then exits
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait(timeout=10)


@pytest.fixture(scope="module")
def client(serve_url: str) -> Iterator[httpx.Client]:
    """The core API tests' ``client``: HTTP through Serve's proxy."""
    with httpx.Client(base_url=serve_url, timeout=60) as c:
        yield c


def test_two_replicas_run_in_their_own_processes(cluster: LocalRay, client) -> None:
    replicas = _replicas(cluster)
    assert len(replicas) == REPLICAS
    # Each replica built the app itself and loaded the default model (its own LRU).
    for pid in replicas:
        assert psutil.Process(pid).memory_info().rss > 200 * 1024**2
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/api/jobs/nope").json()["code"] == "unknown_job"
    start = time.monotonic()
    for _ in range(20):
        assert client.get("/healthz").status_code == 200
    assert time.monotonic() - start < 30
