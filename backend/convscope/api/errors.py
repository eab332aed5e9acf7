"""The one place where domain errors become HTTP status codes and ``{detail, code}`` bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from convscope import errors as e

log = logging.getLogger(__name__)

STATUS: dict[type[e.ConvscopeError], int] = {
    e.UnknownModelError: 404,
    e.UnknownLayerError: 404,
    e.UnknownImageError: 404,
    e.ModelUnavailableError: 503,
    e.NotAConvLayerError: 422,
    e.NoActivationError: 422,
    e.InvalidImageError: 422,
    e.ImageTooLargeError: 413,
    e.PayloadTooLargeError: 413,
    e.InvalidParameterError: 422,
    e.ResponseTooLargeError: 422,
    e.InvalidModelFileError: 422,
    e.OverloadedError: 503,
    e.ModelUploadDisabledError: 403,
    e.UnauthorizedError: 401,
    e.ModelNotDeletableError: 409,
    e.ImageNotDeletableError: 409,
    e.UnsupportedOperatorError: 422,
    e.StorageError: 503,
    e.UnknownJobError: 404,
    e.JobNotFinishedError: 409,
    e.CancelledError: 409,
    # collections and dataset examples
    e.UnknownCollectionError: 404,
    e.EmptyCollectionError: 409,
    e.IndexNotFoundError: 404,
    e.LayerNotIndexedError: 409,
    e.NotSpatialLayerError: 422,
    e.ArchiveTooLargeError: 413,
    e.InvalidArchiveError: 422,
    e.CollectionPathError: 403,
    e.JobTokenError: 403,
    e.StorageFullError: 507,
    e.JsonTooDeepError: 422,
    e.NotOnImageError: 422,
    e.ArchitectureMismatchError: 422,
}

# Echoed user input (a 1 MB "layer name") must not make the error itself huge.
MAX_DETAIL_CHARS = 2000
MAX_EXTRA_CHARS = 256


def status_of(exc: e.ConvscopeError) -> int:
    if isinstance(exc, e.InvalidImageError) and exc.unsupported_type:
        return 415
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def _clip(text: str, limit: int) -> str:
    """Shorten from the middle: the start names the problem, the end holds the hint."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]}...[{len(text) - head - tail} characters]...{text[-tail:]}"


def error_body(detail: str, code: str, **extra: object) -> dict[str, object]:
    clipped = {k: _clip(v, MAX_EXTRA_CHARS) if isinstance(v, str) else v for k, v in extra.items()}
    return {"detail": _clip(detail, MAX_DETAIL_CHARS), "code": code, **clipped}


async def convscope_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.ConvscopeError)
    headers = {}
    if isinstance(exc, e.OverloadedError):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, e.UnauthorizedError):
        headers["WWW-Authenticate"] = 'Bearer realm="convscope"'
    return JSONResponse(
        error_body(exc.detail, exc.code, **exc.extra), status_code=status_of(exc), headers=headers
    )


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body"))
        problems.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return JSONResponse(
        error_body("; ".join(problems), "invalid_parameter", errors=jsonable(_clipped(exc))),
        status_code=422,
    )


def _clipped(exc: RequestValidationError) -> list[dict[str, object]]:
    """Pydantic's error list with echoed inputs shortened (they can be megabytes)."""
    out = []
    for err in exc.errors():
        err = dict(err)
        if isinstance(err.get("input"), str | bytes):
            err["input"] = _clip(str(err["input"]), MAX_EXTRA_CHARS)
        out.append(err)
    return out


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str, bytes: lambda b: "<bytes>"})


async def http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    return JSONResponse(
        error_body(str(exc.detail), code), status_code=exc.status_code, headers=exc.headers
    )


async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        error_body("internal error; the server logged the details", "internal_error"),
        status_code=500,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.ConvscopeError, convscope_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
