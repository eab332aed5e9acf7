"""Who is asking: the opaque per-browser key that owns uploads (see docs/operations.md).

A browser gets a random key in the ``convscope_owner`` cookie (HttpOnly, SameSite=Strict)
with its first upload; a service without cookies may send its own key in the
``X-Convscope-Owner`` header instead. No key: the caller owns nothing (its uploads are
listed to no one, and still served by id).
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated

from fastapi import Depends, Request, Response

COOKIE = "convscope_owner"
HEADER = "X-Convscope-Owner"
MAX_AGE = 365 * 24 * 3600
_KEY = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def caller_owner(request: Request) -> str | None:
    """The caller's key: the header first (services), then the cookie (browsers)."""
    for key in (request.headers.get(HEADER), request.cookies.get(COOKIE)):
        if key and _KEY.match(key):
            return key
    return None


OwnerDep = Annotated[str | None, Depends(caller_owner)]


def issue(request: Request, response: Response) -> str:
    """A new random key, set as the ``convscope_owner`` cookie on ``response``."""
    key = secrets.token_urlsafe(32)
    response.set_cookie(
        COOKIE,
        key,
        max_age=MAX_AGE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return key
