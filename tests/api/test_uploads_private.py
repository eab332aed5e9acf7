"""Private uploads: each visitor lists only its own uploads and can delete them; samples stay
public; services without a browser use the X-Convscope-Owner header or no key at all."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from convscope.config import Settings
from convscope.services.facade import Convscope
from tests.conftest import png_bytes


@pytest.fixture
def visitors(client: TestClient) -> Iterator[tuple[TestClient, TestClient]]:
    """Two browsers on the same server, each with its own cookie jar."""
    a, b = TestClient(client.app), TestClient(client.app)
    yield a, b
    a.close()
    b.close()


def _upload(c: TestClient, data: bytes, name: str = "mine.png", **headers: str):  # type: ignore[no-untyped-def]
    return c.post("/api/images", files={"file": (name, data, "image/png")}, headers=headers)


def _uploads(c: TestClient, **headers: str) -> list[str]:
    listing = c.get("/api/images", headers=headers)
    assert listing.status_code == 200
    return [r["id"] for r in listing.json() if r["kind"] == "upload"]


def test_the_first_upload_issues_a_private_cookie(visitors) -> None:  # type: ignore[no-untyped-def]
    a, _ = visitors
    created = _upload(a, png_bytes(40, 30, seed=101))
    assert created.status_code == 201, created.text
    cookie = created.headers["set-cookie"]
    assert cookie.startswith("convscope_owner=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    # The next upload from the same browser keeps the key: no new cookie.
    again = _upload(a, png_bytes(40, 30, seed=102))
    assert again.status_code == 201 and "set-cookie" not in again.headers
    assert _uploads(a)[:2] == [again.json()["id"], created.json()["id"]]


def test_visitors_see_only_their_own_uploads_and_deletes_keep_the_others_copy(
    visitors, service: Convscope, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    a, b = visitors
    shared, only_a = png_bytes(50, 40, seed=201), png_bytes(50, 40, seed=202)
    shared_id = hashlib.sha256(shared).hexdigest()
    assert _upload(a, shared).json()["id"] == shared_id
    assert _upload(a, only_a).status_code == 201
    assert _upload(b, shared).status_code == 200  # same bytes: already stored, same id
    assert set(_uploads(a)) == {shared_id, hashlib.sha256(only_a).hexdigest()}
    assert _uploads(b) == [shared_id]
    samples = [r for r in b.get("/api/images").json() if r["kind"] == "sample"]
    assert {r["name"] for r in samples} == {"cat", "coffee", "rocket", "astronaut"}
    # b cannot delete a's private upload; the answer does not tell that it exists.
    refused = b.delete(f"/api/images/{hashlib.sha256(only_a).hexdigest()}")
    assert refused.status_code == 404 and refused.json()["code"] == "unknown_image"
    # a deletes the shared image: gone from a's listing, b still lists and fetches it.
    deleted = a.delete(f"/api/images/{shared_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert shared_id not in _uploads(a)
    assert _uploads(b) == [shared_id]
    fetched = b.get(f"/api/images/{shared_id}")
    assert fetched.status_code == 200 and fetched.content == shared
    assert a.delete(f"/api/images/{shared_id}").status_code == 404  # no longer a's
    # b deletes it too: no owner left, so the bytes are gone.
    assert b.delete(f"/api/images/{shared_id}").status_code == 204
    gone = b.get(f"/api/images/{shared_id}")
    assert gone.status_code == 404 and gone.json()["code"] == "unknown_image"
    assert not (settings.data_dir / "images" / f"{shared_id}.img").exists()
    assert not any((settings.data_dir / "images" / "owners").glob(f"*/{shared_id}"))


def test_samples_cannot_be_deleted(visitors, samples) -> None:  # type: ignore[no-untyped-def]
    a, _ = visitors
    refused = a.delete(f"/api/images/{samples['cat']}")
    assert refused.status_code == 409 and refused.json()["code"] == "image_not_deletable"
    assert a.get(f"/api/images/{samples['cat']}").status_code == 200


def test_services_use_a_header_key_or_none(visitors) -> None:  # type: ignore[no-untyped-def]
    a, b = visitors
    key = {"X-Convscope-Owner": "service-key-0123456789abcdef"}
    data = png_bytes(30, 30, seed=301)
    created = _upload(a, data, **key)
    assert created.status_code == 201 and "set-cookie" not in created.headers
    image_id = created.json()["id"]
    assert image_id in _uploads(b, **key)  # the key, not the browser, owns it
    assert image_id not in _uploads(b) and image_id not in _uploads(a)
    # No key at all: the upload works, is served by id, listed to no one else.
    anonymous = TestClient(a.app, cookies=None)
    plain = png_bytes(30, 30, seed=302)
    made = anonymous.post("/api/images", files={"file": ("x.png", plain, "image/png")})
    assert made.status_code == 201
    anonymous.cookies.clear()  # a script that ignores Set-Cookie
    assert anonymous.get(f"/api/images/{made.json()['id']}").content == plain
    assert made.json()["id"] not in _uploads(anonymous)
    assert made.json()["id"] not in _uploads(b, **key)
    # A malformed key is ignored (treated as none), not an error.
    assert _uploads(b, **{"X-Convscope-Owner": "short"}) == []
    anonymous.close()


@pytest.mark.parametrize("name", ["cat", "sample:cat"])
def test_sample_names_work_as_image_ids(client: TestClient, samples, name) -> None:
    by_name = client.get(f"/api/images/{name}")
    assert by_name.status_code == 200
    assert by_name.content == client.get(f"/api/images/{samples['cat']}").content
    top = client.get(f"/api/models/efficientnet_lite0/images/{name}/predictions?top=1")
    assert top.status_code == 200 and top.json()[0]["label"] == "tiger cat"
    unknown = client.get("/api/images/sample:dog")
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_image"
