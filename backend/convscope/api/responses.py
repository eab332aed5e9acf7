"""Binary responses and their OpenAPI descriptions."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

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


def content_disposition(filename: str, disposition: str = "inline") -> str:
    """``Content-Disposition`` per RFC 6266: a plain-ASCII ``filename`` fallback (anything
    but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``) and the exact name as
    ``filename*=UTF-8''<percent-encoded>`` (RFC 5987). A name with quotes, newlines or
    non-Latin-1 characters (a model's name comes from a client) cannot break the header."""
    name = filename[:200]
    fallback = _UNSAFE.sub("_", name).strip("._") or "download"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def send(rendered: Rendered, *, filename: str | None = None) -> Response:
    headers = dict(rendered.headers)
    if filename:
        headers["Content-Disposition"] = content_disposition(filename)
    headers["Cache-Control"] = "private, max-age=3600"
    return Response(rendered.content, media_type=rendered.media_type, headers=headers)
