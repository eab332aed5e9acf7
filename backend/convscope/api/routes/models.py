"""Models, their layers and their conv filters."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from convscope.api.deps import ServiceDep
from convscope.api.responses import ERRORS, media, send
from convscope.api.schemas import LayerOut, ModelOut
from convscope.services.facade import FilterGrid, FilterView

router = APIRouter(prefix="/api/models", tags=["models"])

ModelName = Annotated[str, Path(description="model name, see GET /api/models")]
LayerName = Annotated[
    str, Path(description="dotted layer name, see GET /api/models/{model}/layers")
]


@router.get("", response_model=list[ModelOut])
def list_models(service: ServiceDep) -> list[dict[str, object]]:
    """Every model: available or not, with the reason and how to provide its weights."""
    return service.models()


@router.get("/{model}", response_model=ModelOut, responses=ERRORS)
def get_model(model: ModelName, service: ServiceDep) -> dict[str, object]:
    """One model's entry; loads the model."""
    service.model(model)
    return next(m for m in service.models() if m["name"] == model)


@router.get("/{model}/layers", response_model=list[LayerOut], responses=ERRORS)
def list_layers(model: ModelName, service: ServiceDep) -> list[dict[str, object]]:
    """Every module in forward order with type, output shape and parameter shapes."""
    return service.layers(model)


@router.get(
    "/{model}/layers/{layer}/filters",
    responses=media("png", "json", "npy"),
    response_class=Response,
)
def filters(
    model: ModelName,
    layer: LayerName,
    service: ServiceDep,
    fmt: Annotated[Literal["png", "json", "npy"], Query(alias="format")] = "png",
    normalize: Annotated[
        Literal["filter", "layer"] | None,
        Query(
            description="scale each filter or the whole layer; default: per filter, except "
            "1x1 kernels and reductions (layer-wide; 1x1 kernels always)"
        ),
    ] = None,
    input_channel: Annotated[
        int | None, Query(ge=0, description="draw this input channel of every filter")
    ] = None,
    reduce: Annotated[
        Literal["mean", "abs_max", "l2"],
        Query(description="how to combine input channels when not RGB and no input_channel"),
    ] = "mean",
    channels: Annotated[
        str | None, Query(max_length=4000, description="filters to draw: '0,3,5-9'")
    ] = None,
    scale: Annotated[
        int | None,
        Query(ge=1, description="nearest-neighbour upscaling, at most CONVSCOPE_MAX_SCALE (32)"),
    ] = None,
    colormap: Annotated[
        str | None,
        Query(
            description="for single-channel tiles; default: coolwarm for 1x1 kernels and "
            "signed reductions, viridis for l2, gray otherwise"
        ),
    ] = None,
    padding: Annotated[int, Query(ge=0, le=16)] = 1,
    background: Annotated[int, Query(ge=0, le=255, description="grey level between tiles")] = 255,
    values: Annotated[bool, Query(description="JSON: include the weights")] = True,
    filter: Annotated[
        int | None, Query(ge=0, description="one filter, a tile per input channel")
    ] = None,
) -> Response:
    """A conv layer's filters: PNG grid, JSON (shape, values, stats, layout) or exact NPY."""
    view = FilterView(
        normalize=normalize, input_channel=input_channel, reduce=reduce, filter=filter
    )
    drawn_as = FilterGrid(scale, channels, colormap, padding, values, background)
    rendered = service.filters(model, layer, fmt, view, drawn_as)
    return send(rendered, filename=f"{model}_{layer}_filters.{fmt}")
