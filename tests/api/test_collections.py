"""The collections contract over HTTP: status codes, bodies, and error codes."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import png_bytes
from tests.services.collections.conftest import variants

M = "efficientnet_lite0"


def _wait(client: TestClient, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_collection_life_cycle(client: TestClient, service) -> None:  # type: ignore[no-untyped-def]
    created = client.post("/api/collections", json={"name": "api photos"})
    assert created.status_code == 201
    cid = created.json()["id"]
    assert created.json()["name"] == "api photos"
    assert any(c["id"] == cid for c in client.get("/api/collections").json())

    photos = variants(service, 10, seed=3)
    files = [("files", (n, d, "image/jpeg")) for n, d in photos[:6]]
    files.append(("files", ("notes.txt", b"not an image", "text/plain")))
    files.append(("files", ("again.jpg", photos[0][1], "image/jpeg")))  # duplicate
    added = client.post(f"/api/collections/{cid}/images", files=files)
    assert added.status_code == 200, added.text
    body = added.json()
    assert body["added"] == 6 and body["duplicates"] == 1
    assert body["skipped"][0]["name"] == "notes.txt"
    assert body["skipped"][0]["reason"].startswith("unsupported_image_type")

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for n, d in photos[6:]:
            z.writestr(f"dir/{n}", d)
        z.writestr("../evil.png", png_bytes())
    packed = client.post(
        f"/api/collections/{cid}/images",
        files={"archive": ("photos.zip", buffer.getvalue(), "application/zip")},
    )
    assert packed.status_code == 200
    assert packed.json()["added"] == 4
    assert packed.json()["skipped"] == [{"name": "../evil.png", "reason": "path with '..'"}]

    one = client.get(f"/api/collections/{cid}").json()
    assert one["count"] == 10 and len(one["images"]) == 10
    # collection images are ordinary images
    assert client.get(f"/api/images/{one['images'][0]}").status_code == 200

    missing = client.get(f"/api/models/{M}/collections/{cid}/examples/blocks.3?channel=0")
    assert missing.status_code == 404 and missing.json()["code"] == "index_not_found"

    started = client.post(
        f"/api/models/{M}/collections/{cid}/index", json={"layers": ["blocks.3"], "k": 4}
    )
    assert started.status_code == 202, started.text
    job = _wait(client, started.json()["id"])
    assert job["state"] == "done", job
    summary = client.get(f"/api/jobs/{job['id']}/summary").json()
    assert summary["images"] == 10 and summary["new"] == 10 and summary["bytes"] > 0

    ex = client.get(f"/api/models/{M}/collections/{cid}/examples/blocks.3?channel=3&k=4")
    assert ex.status_code == 200
    entries = ex.json()
    assert len(entries) == 4 and set(entries[0]) == {"image_id", "score", "y", "x", "box"}
    assert [e["score"] for e in entries] == sorted((e["score"] for e in entries), reverse=True)
    assert all(e["image_id"] in one["images"] for e in entries)
    by_mean = client.get(
        f"/api/models/{M}/collections/{cid}/examples/blocks.3?channel=3&k=4&by=mean"
    ).json()
    assert len(by_mean) == 4
    for show in ("patch", "image", "overlay"):
        png = client.get(
            f"/api/models/{M}/collections/{cid}/examples/blocks.3",
            params={"channel": 3, "k": 4, "format": "png", "show": show},
        )
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size[0] > 96

    stats = client.get(f"/api/models/{M}/collections/{cid}/stats/blocks.3").json()
    assert stats["images"] == 10 and len(stats["channels"]) == stats["shape"][0]
    assert {"mean", "std", "max", "sparsity", "dead", "histogram"} <= set(stats["channels"][0])
    npy = client.get(f"/api/models/{M}/collections/{cid}/stats/blocks.3?format=npy")
    table = np.load(io.BytesIO(npy.content))
    assert table.shape[0] == stats["shape"][0]
    np.testing.assert_allclose(table[:, 0], [c["mean"] for c in stats["channels"]])

    image = one["images"][2]
    ranked = client.get(f"/api/models/{M}/images/{image}/channels/blocks.3?top=5&baseline={cid}")
    assert ranked.status_code == 200, ranked.text
    top = ranked.json()["top"]
    assert [t["z"] for t in top] == sorted((t["z"] for t in top), reverse=True)
    assert ranked.json()["baseline"]["source"] == "index"

    # errors: layer not indexed, flat layer, channel out of range, k above the index's
    not_indexed = client.get(f"/api/models/{M}/collections/{cid}/examples/blocks.2?channel=0")
    assert not_indexed.status_code == 409 and not_indexed.json()["code"] == "layer_not_indexed"
    flat = client.post(f"/api/models/{M}/collections/{cid}/index", json={"layers": ["classifier"]})
    assert flat.status_code == 422 and flat.json()["code"] == "not_spatial"
    bad = client.get(f"/api/models/{M}/collections/{cid}/examples/blocks.3?channel=100000")
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_parameter"
    big_k = client.get(f"/api/models/{M}/collections/{cid}/examples/blocks.3?channel=0&k=9")
    assert big_k.status_code == 422 and big_k.json()["code"] == "invalid_parameter"

    assert client.delete(f"/api/collections/{cid}").status_code == 204
    gone = client.get(f"/api/collections/{cid}")
    assert gone.status_code == 404 and gone.json()["code"] == "unknown_collection"
    assert client.get(f"/api/images/{one['images'][0]}").status_code == 200  # images stay


def test_bad_requests(client: TestClient) -> None:
    cid = client.post("/api/collections", json={"name": "empty"}).json()["id"]
    empty = client.post(f"/api/models/{M}/collections/{cid}/index")
    assert empty.status_code == 409 and empty.json()["code"] == "empty_collection"
    nothing = client.post(f"/api/collections/{cid}/images", files={"other": ("x", b"x")})
    assert nothing.status_code == 422 and nothing.json()["code"] == "invalid_parameter"
    not_zip = client.post(
        f"/api/collections/{cid}/images", files={"archive": ("a.zip", b"plain text")}
    )
    assert not_zip.status_code == 422 and not_zip.json()["code"] == "invalid_archive"
    unknown = client.post(f"/api/collections/{'0' * 32}/images", files={"files": ("a", b"x")})
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_collection"
    root = client.post("/api/collections", json={"name": "x", "root": "nope", "path": "."})
    assert root.status_code == 403 and root.json()["code"] == "collection_path_refused"
    assert client.get("/api/collections/roots").json() == []
    nameless = client.post("/api/collections", json={"name": ""})
    assert nameless.status_code == 422
    assert client.delete(f"/api/collections/{'f' * 32}").status_code == 404
    assert client.get(f"/api/jobs/{'0' * 32}/summary").status_code == 404


def test_builtin_collection_is_listed(client: TestClient) -> None:
    listed = client.get("/api/collections").json()
    builtin = [c for c in listed if c["name"] == "built-in photos"]
    assert len(builtin) == 1 and builtin[0]["count"] >= 4
