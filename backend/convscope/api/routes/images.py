"""Images: upload, list, fetch; and a model's view of one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Path, Query, Request, Response, UploadFile, status

from convscope.api.deps import ServiceDep, SettingsDep
from convscope.api.owner import OwnerDep, issue
from convscope.api.responses import ERRORS, media, send
from convscope.api.schemas import ImageOut
from convscope.errors import PayloadTooLargeError

router = APIRouter(tags=["images"])

ImageId = Annotated[
    str,
    Path(
        description="image id (sha256), or a sample's name (cat, sample:cat); see GET /api/images"
    ),
]


def read_upload(file: UploadFile, limit: int) -> bytes:
    """The uploaded bytes, refusing more than ``limit`` without reading them all."""
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"the file is larger than the limit of {limit} bytes (CONVSCOPE_MAX_UPLOAD_BYTES)"
        )
    return data


@router.post(
    "/api/images",
    status_code=status.HTTP_201_CREATED,
    response_model=ImageOut,
    responses={
        200: {"model": ImageOut, "description": "already stored (same bytes)"},
        413: ERRORS[422] | {"description": "file or image too large"},
        415: ERRORS[422] | {"description": "not an image in a supported format"},
        422: ERRORS[422],
    },
)
def upload_image(
    file: Annotated[UploadFile, File(description="JPEG, PNG, WebP, GIF, BMP or TIFF")],
    service: ServiceDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    owner: OwnerDep,
) -> dict[str, object]:
    """Store an image; its id is the sha256 of its bytes (uploading it again changes nothing).

    The upload is owned by the caller's key (``X-Convscope-Owner`` header or
    ``convscope_owner`` cookie); a caller with neither gets a new key as that cookie.
    """
    data = read_upload(file, settings.max_upload_bytes)
    if owner is None:
        owner = issue(request, response)
    record, created = service.put_image(data, file.filename, owner)
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/api/images/{record.id}"
    return record.as_dict()


@router.get("/api/images", response_model=list[ImageOut])
def list_images(service: ServiceDep, owner: OwnerDep) -> list[dict[str, object]]:
    """Bundled samples first, then the caller's own uploads, most recent first."""
    return service.list_images(owner)


@router.delete(
    "/api/images/{image_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={409: ERRORS[422] | {"description": "a bundled sample"}, **ERRORS},
)
def delete_image(image_id: ImageId, service: ServiceDep, owner: OwnerDep) -> Response:
    """Remove the caller's upload (404 if the caller does not own it); the bytes go when no
    other owner is left."""
    service.delete_image(image_id, owner)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/api/images/{image_id}",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}, "description": "the stored bytes"}, **ERRORS},
)
def get_image(image_id: ImageId, service: ServiceDep) -> Response:
    """The image as stored."""
    record, data = service.image(image_id)
    return Response(
        data,
        media_type=record.media_type,
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


@router.get("/api/images/{image_id}/meta", response_model=ImageOut, responses=ERRORS)
def image_meta(image_id: ImageId, service: ServiceDep) -> dict[str, object]:
    """The image's record."""
    return service.image_record(image_id)


@router.get(
    "/api/models/{model}/images/{image_id}/input",
    response_class=Response,
    responses=media("png", "npy"),
)
def input_view(
    model: str,
    image_id: ImageId,
    service: ServiceDep,
    fmt: Annotated[Literal["png", "npy"], Query(alias="format")] = "png",
) -> Response:
    """What the network sees: the resized, cropped image (PNG) or its tensor [3, H, W] (NPY)."""
    return send(service.input_view(model, image_id, fmt), filename=f"{model}_input.{fmt}")
