"""Two API processes sharing one data folder behind the repository's nginx config: any replica
serves any image or model, whichever replica received the upload."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server import payloads
from tests.server.conftest import AUTH, TOKEN
from tests.server.servers import REPO, Server, free_port, start_all

pytestmark = pytest.mark.slow
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
M = "/api/models/efficientnet_lite0"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    shared = tmp_path_factory.mktemp("shared")
    logs = tmp_path_factory.mktemp("logs")
    servers = start_all(
        [
            Server(
                shared, logs / f"replica{i}.log", model_upload_token=TOKEN, models_poll_seconds=0.2
            )
            for i in range(2)
        ]
    )
    yield servers
    for server in servers:
        server.kill()


def render_nginx(prefix: Path, upstreams: list[str], port: int) -> Path:
    """deploy/nginx.conf.template rendered as the nginx image's envsubst does; replicas after
    the first go in upstream.d/, the documented way to list more than one address."""
    template = (REPO / "deploy" / "nginx.conf.template").read_text()
    values = {
        "API_UPSTREAM": upstreams[0],
        "LISTEN_PORT": str(port),
        "FRONTEND_ROOT": str(REPO / "frontend"),
    }
    for name, value in values.items():
        template = template.replace("${" + name + "}", value)
    for folder in ("conf.d", "upstream.d", "tmp"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    (prefix / "conf.d" / "default.conf").write_text(template)
    (prefix / "upstream.d" / "replicas.conf").write_text(
        "".join(f"server {u};\n" for u in upstreams[1:])
    )
    conf = prefix / "nginx.conf"
    shutil.copyfile(REPO / "deploy" / "nginx.conf", conf)
    return conf


@pytest.fixture(scope="module")
def nginx(replicas: list[Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: scripts/test installs it (apt-get install nginx)")
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = render_nginx(prefix, [f"127.0.0.1:{s.port}" for s in replicas], port)
    base = [NGINX, "-e", "stderr", "-p", str(prefix), "-c", str(conf)]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = (prefix / "nginx.log").open("wb")
    proc = subprocess.Popen([*base, "-g", "daemon off;"], stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _wait_for(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_an_image_uploaded_to_one_replica_is_served_by_the_other(
    replicas: list[Server], nginx: str
) -> None:
    a, b = replicas
    data = payloads.png(80, 60, seed=4242)
    image_id = hashlib.sha256(data).hexdigest()
    owner = {"X-Convscope-Owner": "replica-test-owner-0001"}  # uploads list to their owner
    created = httpx.post(f"{a.url}/api/images", files={"file": ("r.png", data)}, headers=owner)
    assert created.status_code == 201, created.text
    for url in (b.url, a.url, nginx):
        got = httpx.get(f"{url}/api/images/{image_id}")
        assert got.status_code == 200 and got.content == data
        listed = httpx.get(f"{url}/api/images", headers=owner).json()
        assert image_id in {i["id"] for i in listed}  # ownership is on the shared volume too
        top = httpx.get(f"{url}{M}/images/{image_id}/predictions", params={"top": 3}, timeout=60)
        assert top.status_code == 200 and len(top.json()) == 3
    # Uploaded through nginx (to whichever replica), readable from both directly.
    other = payloads.png(80, 60, seed=4343)
    through = httpx.post(f"{nginx}/api/images", files={"file": ("n.png", other)})
    assert through.status_code == 201
    for server in replicas:
        assert httpx.get(f"{server.url}/api/images/{through.json()['id']}").content == other


def test_nginx_spreads_requests_over_both_replicas(replicas: list[Server], nginx: str) -> None:
    def served(server: Server) -> float:
        text = httpx.get(f"{server.url}/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('convscope_http_requests_total{method="GET",route="/api/models"')
        )

    before = [served(s) for s in replicas]
    with httpx.Client() as client:  # keep-alive to nginx; nginx balances upstream requests
        for _ in range(12):
            assert client.get(f"{nginx}/api/models").status_code == 200
    after = [served(s) for s in replicas]
    assert all(x > y for x, y in zip(after, before, strict=True)), (before, after)


def test_a_model_uploaded_to_one_replica_is_served_by_the_other(
    replicas: list[Server], nginx: str
) -> None:
    a, b = replicas
    response = httpx.post(
        f"{a.url}/api/models",
        files={"weights": ("m.safetensors", payloads.safetensors_bytes(payloads.weights_state()))},
        data={"manifest": json.dumps(payloads.manifest(name="shared"))},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 201, response.text
    name = response.json()["name"]
    _wait_for(lambda: httpx.get(f"{b.url}/api/models/{name}", timeout=30).status_code == 200)
    assert httpx.get(f"{b.url}/api/models/{name}/layers", timeout=30).status_code == 200
    assert httpx.get(f"{nginx}/api/models/{name}", timeout=30).status_code == 200
    deleted = httpx.delete(f"{b.url}/api/models/{name}", headers=AUTH)
    assert deleted.status_code == 204
    _wait_for(lambda: httpx.get(f"{a.url}/api/models/{name}").status_code == 404)
    assert httpx.get(f"{a.url}/api/models/{name}").json()["code"] == "unknown_model"
