"""Weights that read: expanded weights, first-layer filter analysis, comparing two models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response

from convscope.api.deps import ServiceDep
from convscope.api.responses import ERRORS, media, send

router = APIRouter(prefix="/api/models", tags=["weights"])

ModelName = Annotated[str, Path(description="model name, see GET /api/models")]
LayerName = Annotated[
    str, Path(description="dotted layer name, see GET /api/models/{model}/layers")
]
Scale = Annotated[
    int | None,
    Query(ge=1, description="nearest-neighbour upscaling, at most CONVSCOPE_MAX_SCALE (32)"),
]

EXPANDED_JSON = {
    "type": "object",
    "properties": {
        "shape": {"type": "array", "items": {"type": "integer"}},
        "box": {"type": "array", "items": {"type": "integer"}},
        "norms": {"type": "array", "items": {"type": "number"}},
        "values": {"type": "array"},
    },
}


@router.get(
    "/{model}/layers/{layer}/expanded",
    response_class=Response,
    responses=media("png", "json", "npy", json_schema=EXPANDED_JSON),
)
def expanded(
    model: ModelName,
    layer: LayerName,
    service: ServiceDep,
    channel: Annotated[int, Query(ge=0, description="output channel of the layer")],
    onto: Annotated[
        str, Query(max_length=500, description="'input' (the image) or an earlier layer")
    ] = "input",
    fmt: Annotated[Literal["png", "json", "npy"], Query(alias="format")] = "png",
    top: Annotated[int, Query(ge=1, le=256, description="PNG onto a layer: channels")] = 16,
    scale: Scale = None,
) -> Response:
    """Expanded weights of one channel: NPY float32 [C_onto, h, w] over the box, JSON, PNG."""
    rendered = service.expanded(model, layer, channel, onto, fmt, top=top, scale=scale)
    return send(rendered, filename=f"{model}_{layer}_{channel}_expanded.{fmt}")


@router.get(
    "/{model}/layers/{layer}/analysis", response_class=Response, responses=media("png", "json")
)
def analysis(
    model: ModelName,
    layer: LayerName,
    service: ServiceDep,
    fmt: Annotated[Literal["json", "png"], Query(alias="format")] = "json",
    scale: Scale = None,
) -> Response:
    """First-layer filters: orientation, frequency, colour class, energy; PNG grouped grid."""
    rendered = service.filter_analysis(model, layer, fmt, scale)
    return send(rendered, filename=f"{model}_{layer}_analysis.{fmt}")


@router.get("/{a}/compare/{b}", responses=ERRORS)
def compare(
    a: ModelName,
    b: ModelName,
    service: ServiceDep,
    image: Annotated[
        str | None, Query(max_length=200, description="image id: adds CKA, activation change")
    ] = None,
) -> dict[str, Any]:
    """Per layer: weight change, filter cosine; with an image, linear CKA and activation change."""
    return service.compare_models(a, b, image)
