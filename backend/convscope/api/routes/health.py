"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from convscope.api.schemas import StatusOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=StatusOut)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=StatusOut, responses={503: {"model": StatusOut}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once the default model is loaded, 503 before (or if it failed)."""
    state = request.app.state
    if state.ready.is_set():
        return JSONResponse({"status": "ready"})
    return JSONResponse(
        {"status": "loading" if state.load_error is None else "failed", "detail": state.load_error},
        status_code=503,
    )
