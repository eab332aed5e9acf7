"""Feature maps, channel statistics, predictions and the one-shot call."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile

from convscope.api.deps import ServiceDep, SettingsDep
from convscope.api.responses import ERRORS, media, send
from convscope.api.routes.images import ImageId, read_upload
from convscope.api.schemas import ChannelsOut, PredictionOut
from convscope.render.colormap import COLORMAPS
from convscope.services.facade import MapView

router = APIRouter(prefix="/api/models/{model}", tags=["activations"])

ACTIVATION_JSON = {
    "type": "object",
    "properties": {
        "layer": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "encoding": {"type": "string", "enum": ["base64-uint8", "float32"]},
        "channels": {"type": "array", "items": {"type": "object"}},
    },
}


def map_view(
    channels: Annotated[
        str | None, Query(max_length=4000, description="channels to show: '0,3,5-9'; all if empty")
    ] = None,
    order: Annotated[
        Literal["index", "mean"], Query(description="'mean': most active channels first")
    ] = "index",
    colormap: Annotated[str, Query(description=f"one of {', '.join(COLORMAPS)}")] = "viridis",
    normalize: Annotated[
        Literal["channel", "layer"], Query(description="scale each map or the whole layer")
    ] = "channel",
    scale: Annotated[
        int | None,
        Query(ge=1, description="nearest-neighbour upscaling, at most CONVSCOPE_MAX_SCALE (32)"),
    ] = None,
    padding: Annotated[int, Query(ge=0, le=16)] = 2,
    limit: Annotated[int | None, Query(ge=1, description="at most this many channels")] = None,
    dtype: Annotated[
        Literal["uint8", "float32"], Query(description="JSON only: quantised maps or floats")
    ] = "uint8",
    background: Annotated[int, Query(ge=0, le=255, description="grey level between tiles")] = 255,
) -> MapView:
    return MapView(channels, order, colormap, normalize, scale, padding, limit, dtype, background)


MapViewDep = Annotated[MapView, Depends(map_view)]
Fmt = Annotated[Literal["png", "json", "npy"], Query(alias="format")]


@router.get(
    "/images/{image_id}/activations/{layer}",
    response_class=Response,
    responses=media("png", "json", "npy", json_schema=ACTIVATION_JSON),
)
def activations(
    model: str,
    image_id: ImageId,
    layer: str,
    service: ServiceDep,
    view: MapViewDep,
    fmt: Fmt = "png",
) -> Response:
    """Feature maps of any layer: PNG grid, JSON (uint8 or float) or NPY float32 [C, H, W]."""
    rendered = service.activations(model, image_id, layer, fmt, view)
    return send(rendered, filename=f"{model}_{layer}_activations.{fmt}")


@router.get(
    "/images/{image_id}/channels/{layer}",
    response_model=ChannelsOut,
    # 409: ?baseline= names a collection whose index does not cover the layer
    responses={**ERRORS, 409: ERRORS[422] | {"description": "layer not in the baseline index"}},
)
def channels(
    model: str,
    image_id: ImageId,
    layer: str,
    service: ServiceDep,
    top: Annotated[int, Query(ge=1, le=100_000)] = 10,
    baseline: Annotated[
        str | None,
        Query(max_length=64, description="a collection id: rank the top-k by z-score against it"),
    ] = None,
) -> dict[str, object]:
    """Per-channel min, max, mean and std, and the ``top`` channels by mean activation (or,
    with ``baseline``, by z-score against that collection's index)."""
    return service.channel_stats(model, image_id, layer, top, baseline)


@router.get("/images/{image_id}/predictions", response_model=list[PredictionOut], responses=ERRORS)
def predictions(
    model: str,
    image_id: ImageId,
    service: ServiceDep,
    top: Annotated[int, Query(ge=1, le=100_000)] = 5,
) -> list[dict[str, object]]:
    """Top-k classes with probabilities."""
    return service.predictions(model, image_id, top)


@router.post(
    "/activations",
    response_class=Response,
    responses=media("png", "json", "npy", json_schema=ACTIVATION_JSON),
)
def activations_once(
    model: str,
    file: Annotated[UploadFile, File(description="the image")],
    layer: Annotated[str, Form(description="dotted layer name")],
    service: ServiceDep,
    settings: SettingsDep,
    view: MapViewDep,
    fmt: Annotated[Literal["png", "json", "npy"], Form(alias="format")] = "png",
) -> Response:
    """One-shot: POST an image and a layer, get the maps back; nothing is stored."""
    data = read_upload(file, settings.max_upload_bytes)
    return send(service.activations_once(model, data, layer, fmt, view))
