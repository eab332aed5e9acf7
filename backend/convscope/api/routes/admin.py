"""Model upload and delete over HTTP: off unless ``CONVSCOPE_MODEL_UPLOAD_TOKEN`` is set.

Both routes are ``async`` and check the bearer token before the body is read, so an
unauthenticated client cannot make the server receive and spool a large upload.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response, status
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from convscope.api.deps import ServiceDep
from convscope.api.middleware import json_depth
from convscope.api.responses import ERROR_SCHEMA
from convscope.api.schemas import ModelOut
from convscope.errors import (
    InvalidParameterError,
    JsonTooDeepError,
    ModelUploadDisabledError,
    UnauthorizedError,
)

router = APIRouter(prefix="/api/models", tags=["models"])

MAX_MANIFEST_BYTES = 1024**2


async def require_token(request: Request) -> None:
    """403 when uploads are off; 401 unless ``Authorization: Bearer <token>`` matches."""
    token = request.app.state.settings.model_upload_token
    secret = token.get_secret_value().encode() if token is not None else b""
    if not secret:
        raise ModelUploadDisabledError()
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), secret):
        raise UnauthorizedError()


Authorized = [Depends(require_token)]


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["weights", "manifest"],
                "properties": {
                    "weights": {
                        "type": "string",
                        "format": "binary",
                        "description": "a .safetensors state dict for the architecture",
                    },
                    "manifest": {
                        "type": "string",
                        "description": 'JSON: {"name", "architecture": "torchvision/<arch>" or '
                        '"timm/<arch>", "num_classes", optional "title", "class_names", '
                        '"preprocessing": {crop_size, resize_size, mean, std, interpolation}}',
                    },
                },
            }
        }
    },
}
AUTH_ERRORS: dict[int | str, Any] = {
    401: _error("missing or wrong bearer token"),
    403: _error("model upload is disabled (no CONVSCOPE_MODEL_UPLOAD_TOKEN)"),
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    dependencies=Authorized,
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses={
        **AUTH_ERRORS,
        400: _error("not a valid multipart/form-data body"),
        413: _error("body larger than CONVSCOPE_MAX_MODEL_UPLOAD_BYTES"),
        422: _error(
            "invalid manifest, or weights that are not safetensors, do not fit the "
            "architecture (with missing/unexpected keys) or hold NaN/Inf"
        ),
        503: _error("models folder not writable, or server busy (see Retry-After)"),
    },
)
async def upload_model(
    request: Request, service: ServiceDep, response: Response
) -> dict[str, object]:
    """Add a model: a .safetensors file and a JSON manifest. The server chooses its name."""
    form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_MANIFEST_BYTES)
    try:
        weights, manifest_text = form.get("weights"), form.get("manifest")
        if not isinstance(weights, UploadFile):
            raise InvalidParameterError(
                "weights", "expected a multipart file part named 'weights' (.safetensors)"
            )
        if not isinstance(manifest_text, str):
            raise InvalidParameterError(
                "manifest", "expected a multipart field 'manifest' holding a JSON object"
            )
        limit = request.app.state.settings.max_json_depth
        if json_depth(manifest_text) > limit:  # json.loads would recurse on it (500)
            raise JsonTooDeepError("manifest", limit)
        try:
            manifest = json.loads(manifest_text)
        except ValueError as exc:
            raise InvalidParameterError("manifest", f"not valid JSON: {exc}") from None
        name = await run_in_threadpool(
            service.add_model, weights.file, weights.filename or "", manifest
        )
    finally:
        await form.close()
    response.headers["Location"] = f"/api/models/{name}"
    return await run_in_threadpool(service.model_entry, name)


@router.delete(
    "/{model}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    dependencies=Authorized,
    responses={
        **AUTH_ERRORS,
        404: _error("no such model"),
        409: _error("a built-in or operator-provided model: not deletable over HTTP"),
        503: _error("models folder not writable"),
    },
)
async def delete_model(
    model: Annotated[str, Path(max_length=200, description="an uploaded model's name")],
    service: ServiceDep,
) -> Response:
    """Delete an uploaded model (atomically: it is listed, or gone)."""
    await run_in_threadpool(service.delete_model, model)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
