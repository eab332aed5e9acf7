"""Issue 10 over real HTTP against `convscope serve`: slow clients (raw sockets), hostile fields,
a full disk (a small tmpfs), untrusted names in headers and logs, job control tokens, the Host
check, leftovers after kill -9, and retention. Each refusal: exact status and `code`, and the
service alive and correct afterwards."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from safetensors.torch import save_file

from tests.server import payloads
from tests.server.conftest import AUTH, TOKEN
from tests.server.servers import Server, read_response, start_all

pytestmark = pytest.mark.slow
M = "/api/models/efficientnet_lite0"
LIMITS = {
    "max_inflight_requests": 2,
    "max_watchers": 5,
    "max_watchers_per_client": 3,
    "max_body_uploads_per_client": 4,
    "body_idle_timeout_seconds": 2,
    "body_read_timeout_seconds": 5,
    "max_job_results": 2,
    "janitor_seconds": 1,
    "model_upload_token": TOKEN,
    "models_poll_seconds": 0,
}
ODD_NAME = 'модель "q"\r\nX-Evil: 1;x'  # quote, CR LF, non-Latin-1: all from a manifest


def _operator_model(models_dir: Path) -> None:
    """An operator model (a folder in the models dir) whose name is hostile."""
    folder = models_dir / "odd"
    folder.mkdir(parents=True)
    save_file(payloads.weights_state(), str(folder / "model.safetensors"))
    manifest = payloads.manifest(name=ODD_NAME)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("hardened")
    _operator_model(data / "models")
    return data


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[Server]:
    proc = start_all([Server(data_dir, data_dir / "serve.log", **LIMITS)])[0]
    yield proc
    proc.kill()


# --- raw sockets ---------------------------------------------------------------------------


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=20)


def _head(server: Server, sock: socket.socket, method: str, path: str, extra: str = "") -> None:
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{extra}\r\n".encode()
    )


def _code(body: bytes) -> str:
    return str(json.loads(body)["code"])


def _cat(client: httpx.Client) -> str:
    return next(i["id"] for i in client.get("/api/images").json() if i["name"] == "cat")


def _assert_serving(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    top = client.get(f"{M}/images/{_cat(client)}/predictions", params={"top": 1})
    assert top.status_code == 200, top.text
    assert top.json()[0]["label"] == "tiger cat"  # the bundled cat photo, still classified


# --- slow clients --------------------------------------------------------------------------


def test_watchers_are_bounded_on_their_own_and_need_no_thread(server: Server) -> None:
    """3 SSE streams (the per-client limit) are open; a 4th is 429; with 2 compute slots,
    compute routes still answer 200 (watchers hold no compute slot, no thread)."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        body = {"objectives": ["blocks.2:1"], "steps": 1024, "size": 64, "seed": 7}
        started = client.post(f"{M}/optimize", json=body)
        assert started.status_code == 202, started.text
        job, token = started.json()["id"], started.json()["token"]
        assert token and client.get(f"/api/jobs/{job}").json()["token"] is None
        streams = []
        try:
            for _ in range(3):
                sock = _connect(server)
                _head(server, sock, "GET", f"/api/jobs/{job}/events")
                status, headers, _ = read_response(sock)
                assert status == 200 and headers["content-type"].startswith("text/event-stream")
                streams.append(sock)
            sock = _connect(server)
            _head(server, sock, "GET", f"/api/jobs/{job}/events")
            status, headers, refused = read_response(sock)
            sock.close()
            assert (status, _code(refused)) == (429, "too_many_watchers")
            assert "CONVSCOPE_MAX_WATCHERS_PER_CLIENT" in json.loads(refused)["detail"]
            assert int(headers["retry-after"]) >= 1
            for _ in range(3):  # more than the 2 compute slots, one after another
                _assert_serving(client)
            # The streams are live: progress events arrive without any thread waiting.
            first = streams[0].recv(65536)
            assert b"event: progress" in first or b"keep-alive" in first
            # Job control: no token or a wrong one is 403; the submitter's token cancels.
            for headers_ in ({}, {"X-Job-Token": "x" * 24}):
                response = client.delete(f"/api/jobs/{job}", headers=headers_)
                assert (response.status_code, response.json()["code"]) == (
                    403,
                    "job_token_invalid",
                )
            assert client.get(f"/api/jobs/{job}").json()["state"] in ("queued", "running")
            cancelled = client.delete(f"/api/jobs/{job}", headers={"X-Job-Token": token})
            assert cancelled.status_code == 200
            deadline = time.monotonic() + 30
            while client.get(f"/api/jobs/{job}").json()["state"] != "cancelled":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            # Each stream ends with the job.
            for sock in streams:
                seen = b""
                while b"event: end" not in seen:
                    chunk = sock.recv(65536)
                    assert chunk, seen[-300:]
                    seen += chunk
                assert b'"state":"cancelled"' in seen
        finally:
            for sock in streams:
                sock.close()
        metrics = client.get("/metrics").text
        assert 'convscope_rejected_requests_total{stage="watchers"} 1.0' in metrics
        _assert_serving(client)


def test_trickling_uploads_hold_no_compute_slot_and_time_out(server: Server) -> None:
    """4 uploads that send a few bytes and stall (the per-client limit): a 5th is 429, compute
    routes answer meanwhile, and each stalled one gets 408 after the idle timeout."""
    stalled = []
    head = "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        try:
            for _ in range(4):
                sock = _connect(server)
                _head(server, sock, "POST", "/api/images", head)
                sock.sendall(b"--B\r\n")
                stalled.append(sock)
            time.sleep(0.3)
            sock = _connect(server)
            _head(server, sock, "POST", "/api/images", head)
            status, _, refused = read_response(sock)
            sock.close()
            assert (status, _code(refused)) == (429, "too_many_uploads")
            started = time.monotonic()
            _assert_serving(client)
            _assert_serving(client)
            for sock in stalled:
                status, headers, body = read_response(sock)
                assert (status, _code(body)) == (408, "body_timeout")
                assert "CONVSCOPE_BODY_IDLE_TIMEOUT_SECONDS" in json.loads(body)["detail"]
                assert headers.get("connection") == "close"
            assert time.monotonic() - started < 10
        finally:
            for sock in stalled:
                sock.close()
        _assert_serving(client)


def test_a_body_that_keeps_trickling_hits_the_read_timeout(server: Server) -> None:
    """One byte every 0.5 s never trips the idle timeout; the 5 s total limit ends it."""
    sock = _connect(server)
    try:
        _head(
            server,
            sock,
            "POST",
            "/api/images",
            "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n",
        )
        sock.sendall(
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        started = time.monotonic()
        answered: list[tuple[int, dict[str, str], bytes]] = []

        def drip() -> None:
            with contextlib.suppress(OSError):
                while not answered and time.monotonic() - started < 15:
                    sock.sendall(b"x")
                    time.sleep(0.5)

        thread = threading.Thread(target=drip)
        thread.start()
        answered.append(read_response(sock))
        thread.join()
        status, _, body = answered[0]
        assert (status, _code(body)) == (408, "body_timeout")
        assert "CONVSCOPE_BODY_READ_TIMEOUT_SECONDS" in json.loads(body)["detail"]
        assert 4.5 < time.monotonic() - started < 9
    finally:
        sock.close()


# --- hostile fields -------------------------------------------------------------------------


def test_every_field_is_bounded_before_it_is_parsed(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        long = client.post(f"{M}/optimize", json={"objectives": ["blocks.2:1+" * 60]})
        assert (long.status_code, long.json()["code"]) == (422, "invalid_parameter")
        assert "512" in long.json()["detail"]
        huge = client.post(
            f"{M}/optimize",
            content=json.dumps({"objectives": ["x" * 100_000]}),
            headers={"Content-Type": "application/json"},
        )
        assert (huge.status_code, huge.json()["code"]) == (413, "payload_too_large")
        assert "CONVSCOPE_MAX_JSON_BODY_BYTES" in huge.json()["detail"]
        deep = client.post(
            f"{M}/optimize",
            content=b"[" * 5000 + b"]" * 5000,
            headers={"Content-Type": "application/json"},
        )
        assert (deep.status_code, deep.json()["code"]) == (422, "json_too_deep")
        manifest = '{"name": ' + "[" * 100_000 + "]" * 100_000 + "}"
        nested = client.post(
            "/api/models",
            files={"weights": ("m.safetensors", b"x" * 64)},
            data={"manifest": manifest},
            headers=AUTH,
        )
        assert (nested.status_code, nested.json()["code"]) == (422, "json_too_deep")
        weights = payloads.safetensors_bytes({"x": payloads.weights_state()["features.0.weight"]})
        tiny_huge = client.post(
            "/api/models",
            files={"weights": ("m.safetensors", weights)},
            data={
                "manifest": json.dumps(
                    payloads.manifest(
                        architecture="torchvision/vgg16",
                        num_classes=100_000,
                        class_names=None,
                    )
                )
            },
            headers=AUTH,
        )
        assert (tiny_huge.status_code, tiny_huge.json()["code"]) == (422, "invalid_model")
        assert "CONVSCOPE_MAX_MODEL_PARAMETERS" in tiny_huge.json()["detail"]
        _assert_serving(client)


def test_job_labels_are_bounded(server: Server) -> None:
    objectives = [f"blocks.2:{i} + blocks.2:{i + 1} - 0.5*blocks.3:{i}" for i in range(16)]
    assert len(", ".join(objectives)) > 600  # the label would be longer unbounded
    with httpx.Client(base_url=server.url, timeout=60) as client:
        started = client.post(f"{M}/optimize", json={"objectives": objectives, "steps": 1})
        assert started.status_code in (200, 202), started.text
        job = client.get(f"/api/jobs/{started.json()['id']}").json()
        assert len(job["label"]) <= 200
        client.delete(f"/api/jobs/{job['id']}", headers={"X-Job-Token": started.json()["token"]})


# --- names in headers and logs, the Host check ----------------------------------------------


def test_hostile_names_in_headers_and_logs(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        names = [m["name"] for m in client.get("/api/models").json()]
        assert ODD_NAME in names
        path = f"/api/models/{_pct(ODD_NAME)}/layers/features.0/filters"
        response = client.get(path)
        assert response.status_code == 200, response.text
        disposition = response.headers["content-disposition"]
        assert disposition.startswith('inline; filename="')
        assert "filename*=UTF-8''" + _pct(f"{ODD_NAME}_features.0_filters.png") in disposition
        assert "x-evil" not in response.headers
        fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
        assert fallback.isascii() and all(c.isalnum() or c in "._-" for c in fallback)
        # Control characters in a URL reach the text log escaped, never raw.
        evil = client.get("/api/%1b%5b31mred%0a2026-01-01T00:00:00 info forged")
        assert evil.status_code == 404
    time.sleep(0.5)
    log = server.log_path.read_bytes()
    assert b"\x1b[31m" not in log
    assert b"\n2026-01-01T00:00:00 info forged" not in log
    assert b'path="/api/\\u001b[31mred\\n2026-01-01T00:00:00 info forged"' in log


def _pct(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def test_host_header_is_checked_when_bound_to_loopback(server: Server) -> None:
    for host, status in (
        ("evil.example", 421),
        (f"rebind.attacker.example:{server.port}", 421),
        (f"127.0.0.1:{server.port}", 200),
        ("localhost", 200),
        (f"[::1]:{server.port}", 200),
    ):
        response = httpx.get(f"{server.url}/api/models", headers={"Host": host}, timeout=30)
        assert response.status_code == status, (host, response.text)
        if status == 421:
            assert response.json()["code"] == "untrusted_host"
            assert "CONVSCOPE_TRUSTED_HOSTS" in response.json()["detail"]


# --- retention and leftovers ----------------------------------------------------------------


def test_job_results_are_trimmed_by_the_janitor(server: Server, data_dir: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for seed in range(4):
            body = {"objectives": ["blocks.2:3"], "steps": 1, "size": 16, "seed": 100 + seed}
            job = client.post(f"{M}/optimize", json=body).json()
            deadline = time.monotonic() + 60
            while client.get(f"/api/jobs/{job['id']}").json()["state"] != "done":
                assert time.monotonic() < deadline
                time.sleep(0.1)
        deadline = time.monotonic() + 10
        while len(list((data_dir / "results").glob("*.png"))) > 2:  # CONVSCOPE_MAX_JOB_RESULTS
            assert time.monotonic() < deadline, list((data_dir / "results").iterdir())
            time.sleep(0.2)


def test_leftovers_after_kill_9_are_collected_and_corrupt_metadata_repaired(
    server: Server, data_dir: Path
) -> None:
    data = payloads.png(50, 40, seed=4242)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        created = client.post("/api/images", files={"file": ("keep.png", data)})
        assert created.status_code == 201
        image_id = created.json()["id"]
    server.kill()
    images = data_dir / "images"
    (images / f"{image_id}.json").write_bytes(b"")  # a zero-byte metadata file
    old = time.time() - 7200
    orphan = images / ("f" * 64 + ".img")
    orphan.write_bytes(b"half of a killed write")
    tmp = images / ".tmp-dead.part"
    tmp.write_bytes(b"partial")
    staging = data_dir / "models" / ".staging" / "dead-0000aaaa"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"partial")
    for path in (orphan, tmp, staging):
        os.utime(path, (old, old))
    restarted = start_all([Server(data_dir, data_dir / "serve2.log", **LIMITS)])[0]
    try:
        with httpx.Client(base_url=restarted.url, timeout=60) as client:
            record = client.get(f"/api/images/{image_id}/meta")
            assert record.status_code == 200, record.text
            assert (record.json()["width"], record.json()["height"]) == (50, 40)
            served = client.get(f"/api/images/{image_id}").content
            assert hashlib.sha256(served).hexdigest() == image_id
            assert json.loads((images / f"{image_id}.json").read_text())["id"] == image_id
            deadline = time.monotonic() + 10
            while orphan.exists() or tmp.exists() or staging.exists():
                assert time.monotonic() < deadline, (orphan, tmp, staging)
                time.sleep(0.2)
            _assert_serving(client)
    finally:
        restarted.kill()


# --- a full disk ----------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (root only); skipped with the reason when mounting is refused."""
    folder = tmp_path / "small"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here: the disk-full test needs a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs was refused ({done.stderr.strip()}): needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_507_leaves_no_partial_file_and_loses_nothing(
    tmpfs: Path, tmp_path: Path
) -> None:
    log = tmp_path / "full.log"
    server = start_all([Server(tmpfs, log, model_upload_token=TOKEN, models_poll_seconds=0)])[0]
    acked: dict[str, bytes] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            refused = None
            for seed in range(40):
                data = payloads.png(400, 400, seed=seed)  # ~480 KB of noise each
                response = client.post("/api/images", files={"file": (f"{seed}.png", data)})
                if response.status_code == 201:
                    acked[response.json()["id"]] = data
                    continue
                refused = response
                break
            assert refused is not None, "the 8 MiB disk never filled"
            assert (refused.status_code, refused.json()["code"]) == (507, "storage_full")
            assert "CONVSCOPE_MAX_IMAGE_STORE_BYTES" in refused.json()["detail"]
            upload = client.post(
                "/api/models",
                files={
                    "weights": (
                        "m.safetensors",
                        payloads.safetensors_bytes(payloads.weights_state()),
                    )
                },
                data={"manifest": json.dumps(payloads.manifest())},
                headers=AUTH,
            )
            assert (upload.status_code, upload.json()["code"]) == (507, "storage_full")
            leftovers = [p.name for p in tmpfs.rglob("*") if p.name.startswith(".tmp-")]
            assert leftovers == []
            staging = tmpfs / "models" / ".staging"
            assert not staging.exists() or not any(staging.iterdir())
            for image_id, data in acked.items():  # every acknowledged image is intact
                assert client.get(f"/api/images/{image_id}").content == data
            _assert_serving(client)
    finally:
        server.kill()
    assert len(acked) >= 3
