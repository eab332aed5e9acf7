"""Collections of images, their index per model, dataset examples and statistics."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Response, UploadFile, status
from pydantic import BaseModel, Field

from convscope.api.deps import ServiceDep
from convscope.api.responses import ERRORS, media, send
from convscope.api.routes.explain import JobOut
from convscope.errors import InvalidParameterError

router = APIRouter(tags=["collections and dataset examples"])


class CollectionIn(BaseModel):
    name: str = Field(min_length=1, max_length=120)
    root: str | None = Field(
        None, max_length=200, description="a root's name from GET /api/collections/roots"
    )
    path: str | None = Field(None, max_length=1000, description="a folder relative to the root")


class CollectionOut(BaseModel):
    id: str
    name: str
    count: int
    created: float
    source: dict[str, str] | None = None


class CollectionDetailOut(CollectionOut):
    images: list[str]
    indexes: list[dict[str, object]]


class SkippedOut(BaseModel):
    name: str
    reason: str


class AddedOut(BaseModel):
    added: int
    duplicates: int
    skipped: list[SkippedOut]
    images: list[str]


class IndexIn(BaseModel):
    layers: list[str] = Field(
        default_factory=list, max_length=2000, description="default: every spatial module"
    )
    k: int = Field(16, ge=1, le=64, description="examples kept per channel")


EXAMPLE_JSON = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "image_id": {"type": "string"},
            "score": {"type": "number"},
            "y": {"type": "integer"},
            "x": {"type": "integer"},
            "box": {"type": "array", "items": {"type": "integer"}},
        },
    },
}
CollectionId = Annotated[str, "collection id (GET /api/collections)"]


def _also(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``ERRORS`` plus the statuses collections add (same JSON error body)."""
    what = {
        403: "server folder outside CONVSCOPE_COLLECTION_ROOTS",
        409: "empty collection, layer not in the index, or job not done",
        413: "archive, folder or body too large",
    }
    return {**ERRORS, **{c: ERRORS[422] | {"description": what[c]} for c in codes}}


@router.post(
    "/api/collections", status_code=201, response_model=CollectionOut, responses=_also(403, 413)
)
def create(body: CollectionIn, service: ServiceDep, response: Response) -> dict[str, object]:
    """Create a collection, empty or from a folder under an allow-listed server root."""
    created = service.create_collection(body.name, body.root, body.path)
    response.headers["Location"] = f"/api/collections/{created['id']}"
    return created


@router.get("/api/collections", response_model=list[CollectionOut])
def list_collections(service: ServiceDep) -> list[dict[str, object]]:
    """Every collection (the built-in one included) with its image count."""
    return service.list_collections()


@router.get("/api/collections/roots", response_model=list[dict[str, str]])
def roots(service: ServiceDep) -> list[dict[str, str]]:
    """The server folders collections may be filled from (CONVSCOPE_COLLECTION_ROOTS)."""
    return service.collection_roots()


@router.get("/api/collections/{cid}", response_model=CollectionDetailOut, responses=ERRORS)
def collection(cid: CollectionId, service: ServiceDep) -> dict[str, object]:
    """One collection: its image ids, in order, and its indexes."""
    return service.collection(cid)


@router.delete("/api/collections/{cid}", status_code=204, response_class=Response, responses=ERRORS)
def delete(cid: CollectionId, service: ServiceDep) -> Response:
    """Delete a collection and its indexes; its images stay in the image store."""
    service.delete_collection(cid)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api/collections/{cid}/images",
    response_model=AddedOut,
    responses=_also(413),
)
def add_images(
    cid: CollectionId,
    service: ServiceDep,
    files: Annotated[list[UploadFile], File(description="images (repeat the field)")] = [],  # noqa: B006
    archive: Annotated[UploadFile | None, File(description="one .zip or .tar(.gz)")] = None,
) -> dict[str, object]:
    """Add images: multipart ``files`` (repeated) and/or one ``archive``. Reports skips."""
    if not files and archive is None:
        raise InvalidParameterError(
            "files", "expected multipart field 'files' (repeated) or 'archive'"
        )
    uploads = [(f.filename or "upload", f.file) for f in files]
    packed = None if archive is None else (archive.filename or "archive", archive.file)
    return service.add_to_collection(cid, uploads, packed)


@router.post(
    "/api/models/{model}/collections/{cid}/index",
    response_model=JobOut,
    status_code=202,
    responses={200: {"model": JobOut, "description": "already done"}, **_also(409)},
)
def index(
    model: str,
    cid: CollectionId,
    service: ServiceDep,
    response: Response,
    body: IndexIn | None = None,
) -> dict[str, object]:
    """Index the collection through the model: a job (status, events, cancel at /api/jobs)."""
    body = body or IndexIn.model_validate({})
    job = service.index_collection(model, cid, tuple(body.layers), body.k).as_dict()
    response.status_code = status.HTTP_200_OK if job["state"] == "done" else 202
    response.headers["Location"] = f"/api/jobs/{job['id']}"
    return job


@router.get("/api/jobs/{job_id}/summary", response_model=dict[str, object], responses=_also(409))
def summary(job_id: str, service: ServiceDep) -> dict[str, object]:
    """A finished index job's summary: images, new ones, skipped ones, bytes on disk."""
    return service.index_summary(job_id)


@router.get(
    "/api/models/{model}/collections/{cid}/examples/{layer}",
    response_class=Response,
    responses={**media("json", "png", json_schema=EXAMPLE_JSON), **_also(409)},
)
def dataset_examples(
    model: str,
    cid: CollectionId,
    layer: str,
    service: ServiceDep,
    channel: Annotated[int, Query(ge=0)],
    k: Annotated[int, Query(ge=1, le=64)] = 9,
    by: Literal["max", "mean"] = "max",
    fmt: Annotated[Literal["json", "png"], Query(alias="format")] = "json",
    show: Annotated[
        Literal["patch", "image", "overlay"],
        Query(description="PNG: patches, whole images with the box, or the map overlaid"),
    ] = "patch",
    rank: Annotated[int | None, Query(ge=0, le=63, description="only the example at rank")] = None,
) -> Response:
    """The images that excite a channel most: score, argmax (y, x), receptive-field box."""
    rendered = service.dataset_examples(model, cid, layer, channel, k, by, fmt, show, rank)
    return send(rendered)


@router.get(
    "/api/models/{model}/collections/{cid}/stats/{layer}",
    response_class=Response,
    responses={**media("json", "npy"), **_also(409)},
)
def stats(
    model: str,
    cid: CollectionId,
    layer: str,
    service: ServiceDep,
    fmt: Annotated[Literal["json", "npy"], Query(alias="format")] = "json",
) -> Response:
    """Per-channel mean, std, max, sparsity, dead and histogram over the collection."""
    return send(service.collection_stats(model, cid, layer, fmt))
