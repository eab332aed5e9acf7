"""Binary responses and their OpenAPI descriptions."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from convscope.services.rendered import Rendered

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
    "required": ["detail", "code"],
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def media(*kinds: str, json_schema: dict[str, Any] | None = None) -> dict[int | str, Any]:
    """OpenAPI ``responses=`` for an endpoint answering PNG, NPY and/or JSON by ``format``."""
    content: dict[str, Any] = {}
    if "png" in kinds:
        content["image/png"] = {"schema": {"type": "string", "format": "binary"}}
    if "npy" in kinds:
        content["application/x-npy"] = {
            "schema": {"type": "string", "format": "binary"},
            "example": "NumPy .npy file, float32",
        }
    if "json" in kinds:
        content["application/json"] = {"schema": json_schema or {"type": "object"}}
    return {200: {"description": "the requested format", "content": content}, **ERRORS}


ERRORS: dict[int | str, Any] = {
    404: _error("unknown model, layer or image; the detail names where to find valid values"),
    422: _error("invalid parameter, or a layer that cannot be drawn this way"),
    503: _error("model unavailable, or server busy (see Retry-After)"),
}


def send(rendered: Rendered, *, filename: str | None = None) -> Response:
    headers = dict(rendered.headers)
    if filename:
        headers["Content-Disposition"] = f'inline; filename="{filename}"'
    headers["Cache-Control"] = "private, max-age=3600"
    return Response(rendered.content, media_type=rendered.media_type, headers=headers)
