"""Feature visualisation jobs, DeepDream, Grad-CAM and saliency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

import anyio.to_thread
import orjson
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from convscope.api.deps import ServiceDep
from convscope.api.responses import ERRORS, media, send
from convscope.api.routes.images import ImageId
from convscope.services.optvis.optimize import DreamSettings, OptimizeSettings
from convscope.services.optvis.runs import OptimizeRequest

router = APIRouter(tags=["feature visualisation and attribution"])


class OptimizeIn(BaseModel):
    """An optimisation: ``objectives`` (one image each), or ``layer`` with ``channels``."""

    objectives: list[str] = Field(
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


@router.delete("/api/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def cancel(job_id: str, service: ServiceDep) -> dict:
    """Cancel a queued or running job."""
    return service.cancel_job(job_id).as_dict()


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
    """Server-sent events: one ``progress`` event per change, then ``end``."""
    first = await anyio.to_thread.run_sync(service.job, job_id)  # 404 before streaming

    async def stream() -> AsyncIterator[bytes]:
        status_now = first
        version = -1
        while True:
            if status_now.version != version:
                version = status_now.version
                yield b"event: progress\ndata: " + orjson.dumps(status_now.as_dict()) + b"\n\n"
            if status_now.state in ("done", "failed", "cancelled"):
                yield b"event: end\ndata: " + orjson.dumps(status_now.as_dict()) + b"\n\n"
                return
            if await request.is_disconnected():
                return
            status_now = await anyio.to_thread.run_sync(service.job_update, job_id, version, 10.0)
            if status_now.version == version:
                yield b": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/api/models/{model}/images/{image_id}/cam",
    response_class=Response,
    responses=media("png", "npy", "json"),
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
    """Grad-CAM / Grad-CAM++ / Score-CAM: overlay PNG, heatmap NPY [H, W] or JSON (raw cam)."""
    rendered = service.cam(
        model,
        image_id,
        layer=layer,
        class_index=class_index,
        method=method,
        fmt=fmt,
        alpha=alpha,
    )
    return send(rendered, filename=f"{model}_{method}.{fmt}")


@router.get(
    "/api/models/{model}/images/{image_id}/saliency",
    response_class=Response,
    responses=media("png", "npy"),
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
    """Saliency: vanilla gradient, SmoothGrad or guided backprop, as PNG or NPY [H, W]."""
    rendered = service.saliency(
        model,
        image_id,
        method=method,
        class_index=class_index,
        fmt=fmt,
        samples=samples,
        noise=noise,
        seed=seed,
    )
    return send(rendered, filename=f"{model}_saliency_{method}.{fmt}")
