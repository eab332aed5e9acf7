"""Feature visualisation jobs, DeepDream, Grad-CAM and saliency.

Over 300 lines: one route per job operation (status, events, result, preview, cancel)
and per method, each a few lines of parameters and one facade call; splitting them would
scatter the job routes that clients use together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from convscope.api.deps import ServiceDep
from convscope.api.responses import ERRORS, media, send
from convscope.api.routes.images import ImageId
from convscope.services.compute.jobs import JobStatus
from convscope.services.optvis.optimize import DreamSettings, OptimizeSettings
from convscope.services.optvis.runs import OptimizeRequest

router = APIRouter(tags=["feature visualisation and attribution"])

MAX_OBJECTIVE_CHARS = 512  # one objective expression (docs/operations.md)
KEEPALIVE_SECONDS = 10.0
POLL_SECONDS = 1.0


class OptimizeIn(BaseModel):
    """An optimisation: ``objectives`` (one image each), or ``layer`` with ``channels``."""

    objectives: list[Annotated[str, Field(max_length=MAX_OBJECTIVE_CHARS)]] = Field(
        default_factory=list,
        max_length=64,
        description="e.g. ['blocks.4:10', 'neuron(blocks.4:3)', 'layer(blocks.3)', "
        "'blocks.4:10 - 0.5*blocks.4:7']",
    )
    layer: str | None = Field(None, max_length=300)
    channels: list[int] = Field(default_factory=list, max_length=64)
    kind: Literal["channel", "neuron", "layer"] = "channel"
    negative: bool = False
    steps: int = Field(128, ge=1, description="at most CONVSCOPE_MAX_OPTIMIZE_STEPS (default 1024)")
    size: int = Field(
        128, ge=16, description="image side in pixels; at most CONVSCOPE_MAX_OPTIMIZE_SIZE (384)"
    )
    lr: float = Field(0.05, gt=0, le=10)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    param: Literal["fourier", "pixel"] = "fourier"
    decorrelate: bool = True
    transforms: bool = True


class DreamIn(BaseModel):
    layer: str = Field(max_length=300)
    steps: int = Field(20, ge=1, le=500)
    octaves: int = Field(3, ge=1, le=6)
    octave_scale: float = Field(1.4, gt=1, le=3)
    lr: float = Field(0.01, gt=0, le=1)
    jitter: int = Field(16, ge=0, le=64)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class JobOut(BaseModel):
    id: str
    key: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    step: int
    total: int
    queue_position: int | None
    version: int
    created: float
    started: float | None
    finished: float | None
    error: dict[str, str] | None
    has_preview: bool
    cached: bool
    label: str
    token: str | None = Field(
        None,
        description="only in the answer to the submitter: the control token that "
        "DELETE /api/jobs/{id} needs (header X-Job-Token)",
    )


def _job_response(job: dict[str, object], response: Response) -> dict[str, object]:
    response.status_code = status.HTTP_200_OK if job["state"] == "done" else 202
    response.headers["Location"] = f"/api/jobs/{job['id']}"
    return job


@router.post(
    "/api/models/{model}/optimize",
    response_model=JobOut,
    status_code=202,
    responses={200: {"model": JobOut, "description": "already done (cached)"}, **ERRORS},
)
def optimize(model: str, body: OptimizeIn, service: ServiceDep, response: Response) -> dict:
    """Start a feature visualisation job (202), or get the finished one from the cache (200)."""
    settings = OptimizeSettings(
        steps=body.steps,
        size=body.size,
        lr=body.lr,
        seed=body.seed,
        param=body.param,
        decorrelate=body.decorrelate,
        transforms=body.transforms,
    )
    request = OptimizeRequest(
        tuple(body.objectives),
        body.layer,
        tuple(body.channels),
        body.kind,
        body.negative,
        settings,
    )
    return _job_response(service.optimize(model, request).as_dict(), response)


@router.post(
    "/api/models/{model}/images/{image_id}/deepdream",
    response_model=JobOut,
    status_code=202,
    responses={200: {"model": JobOut, "description": "already done (cached)"}, **ERRORS},
)
def dream(
    model: str, image_id: ImageId, body: DreamIn, service: ServiceDep, response: Response
) -> dict:
    """Start a DeepDream job on an image for one layer."""
    settings = DreamSettings(
        steps=body.steps,
        octaves=body.octaves,
        octave_scale=body.octave_scale,
        lr=body.lr,
        jitter=body.jitter,
        seed=body.seed,
    )
    job = service.deepdream(model, image_id, body.layer, settings)
    return _job_response(job.as_dict(), response)


@router.get("/api/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def job(job_id: str, service: ServiceDep) -> dict:
    """A job's state, progress (step of total) and queue position."""
    return service.job(job_id).as_dict()


@router.delete(
    "/api/jobs/{job_id}",
    response_model=JobOut,
    responses={**ERRORS, 403: {"description": "missing or wrong X-Job-Token"}},
)
def cancel(
    job_id: str,
    service: ServiceDep,
    x_job_token: Annotated[
        str,
        Header(
            max_length=2048,
            description="the submitter's token (several, comma-separated, if this client "
            "submitted the same work more than once)",
        ),
    ] = "",
) -> dict:
    """Cancel a queued or running job; needs the token its submitter got (X-Job-Token).

    Identical submissions share one job: it stops when every submitter has cancelled."""
    return service.cancel_job(job_id, x_job_token).as_dict()


@router.get("/api/jobs/{job_id}/result.png", response_class=Response, responses=media("png"))
def result(job_id: str, service: ServiceDep) -> Response:
    """The finished image (409 while the job is not done)."""
    return Response(
        service.job_result(job_id),
        media_type="image/png",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


@router.get(
    "/api/jobs/{job_id}/preview.png",
    response_class=Response,
    responses={**media("png"), 204: {"description": "no preview yet"}},
)
def preview(
    job_id: str,
    service: ServiceDep,
    v: Annotated[
        int | None,
        Query(ge=0, description="the job's version: a distinct URL per preview for caches"),
    ] = None,
) -> Response:
    """The latest preview while the job runs (204 before the first one). ``v`` is ignored."""
    del v  # only there so that each preview's URL differs (the UI's <img> reloads)
    data = service.job_preview(job_id)
    if data is None:
        return Response(status_code=204)
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get(
    "/api/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "progress events"},
        **ERRORS,
    },
)
async def events(job_id: str, request: Request, service: ServiceDep) -> StreamingResponse:
    """Server-sent events: one ``progress`` event per change, then ``end``.

    Waits on the event loop (the job manager wakes it), never in a worker thread; admitted
    as a watcher (CONVSCOPE_MAX_WATCHERS, ..._PER_CLIENT), closed after
    CONVSCOPE_WATCH_MAX_SECONDS."""
    first = service.job(job_id)  # 404 before streaming; a lookup, no waiting
    limit = request.app.state.settings.watch_max_seconds

    async def stream() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(changed.set)

        stop = service.watch_job(job_id, wake)
        deadline = loop.time() + limit
        wrote = loop.time()
        try:
            status_now = first
            version = -1
            while True:
                if status_now.version != version:
                    version, wrote = status_now.version, loop.time()
                    yield b"event: progress\ndata: " + _event(status_now) + b"\n\n"
                if status_now.state in ("done", "failed", "cancelled"):
                    yield b"event: end\ndata: " + _event(status_now) + b"\n\n"
                    return
                left = deadline - loop.time()
                if left <= 0:
                    yield b"event: timeout\ndata: {}\n\n"  # reconnect to follow further
                    return
                # Woken by the job manager; polled each second too (cluster jobs do not wake).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(POLL_SECONDS, left))
                changed.clear()
                status_now = service.job(job_id)
                if status_now.version == version and loop.time() - wrote >= KEEPALIVE_SECONDS:
                    yield b": keep-alive\n\n"
                    wrote = loop.time()
        finally:
            stop()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/api/models/{model}/images/{image_id}/cam",
    response_class=Response,
    responses={**media("png", "npy", "json"), 202: {"model": JobOut, "description": "job"}},
)
def class_activation_map(
    model: str,
    image_id: ImageId,
    service: ServiceDep,
    layer: Annotated[str | None, Query(max_length=300, description="default: per model")] = None,
    class_index: Annotated[int | None, Query(ge=0, description="default: top-1")] = None,
    method: Annotated[Literal["gradcam", "gradcampp", "scorecam"], Query()] = "gradcam",
    fmt: Annotated[Literal["png", "npy", "json"], Query(alias="format")] = "png",
    alpha: Annotated[float, Query(ge=0, le=1, description="heatmap opacity (PNG)")] = 0.5,
) -> Response:
    """Grad-CAM / Grad-CAM++ / Score-CAM: overlay PNG, heatmap NPY [H, W] or JSON (raw cam).

    Score-CAM runs as a job: 202 with the job (``Location: /api/jobs/{id}``) until it is
    done; the same GET then answers 200 with the result.
    """
    rendered = service.cam_or_job(
        model,
        image_id,
        layer=layer,
        class_index=class_index,
        method=method,
        fmt=fmt,
        alpha=alpha,
    )
    if isinstance(rendered, JobStatus):
        return _job_accepted(rendered)
    return send(rendered, filename=f"{model}_{method}.{fmt}")


@router.get(
    "/api/models/{model}/images/{image_id}/saliency",
    response_class=Response,
    responses={**media("png", "npy"), 202: {"model": JobOut, "description": "job"}},
)
def saliency_map(
    model: str,
    image_id: ImageId,
    service: ServiceDep,
    method: Annotated[Literal["vanilla", "smoothgrad", "guided"], Query()] = "vanilla",
    class_index: Annotated[int | None, Query(ge=0, description="default: top-1")] = None,
    fmt: Annotated[Literal["png", "npy"], Query(alias="format")] = "png",
    samples: Annotated[int, Query(ge=1, le=64, description="SmoothGrad samples")] = 16,
    noise: Annotated[float, Query(ge=0, le=1, description="SmoothGrad noise level")] = 0.15,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """Saliency: vanilla gradient, SmoothGrad or guided backprop, as PNG or NPY [H, W].

    SmoothGrad runs as a job: 202 with the job until it is done, then 200 with the result.
    """
    rendered = service.saliency_or_job(
        model,
        image_id,
        method=method,
        class_index=class_index,
        fmt=fmt,
        samples=samples,
        noise=noise,
        seed=seed,
    )
    if isinstance(rendered, JobStatus):
        return _job_accepted(rendered)
    return send(rendered, filename=f"{model}_saliency_{method}.{fmt}")


def _job_accepted(job: JobStatus) -> Response:
    """202 with the job's status; GET the same URL again once the job is done."""
    return Response(
        orjson.dumps(job.as_dict()),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"/api/jobs/{job.id}", "Cache-Control": "no-store"},
    )


def _event(job: JobStatus) -> bytes:
    return orjson.dumps({**job.as_dict(), "token": None})
