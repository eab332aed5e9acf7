"""Response models: they document the JSON API in /docs and validate what we send."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    detail: str
    code: str = Field(description="stable, machine-readable error code")


class ModelOut(BaseModel):
    name: str
    title: str
    source: str = Field(description="embedded | torchvision | untrained | user")
    description: str = ""
    available: bool
    loaded: bool
    default: bool
    error: str | None = Field(None, description="why the model cannot be served, if it cannot")
    hint: str | None = Field(None, description="how to make an unavailable model available")
    input_size: list[int] | None
    num_classes: int | None
    preprocessing: dict[str, Any] | None = None
    weights: str | None = None
    verified: bool | None = Field(
        None,
        description="true: the published weights (hash checked); false: not checked, or "
        "random; null: your own weights",
    )
    num_layers: int | None = None
    num_parameters: int | None = None


class LayerOut(BaseModel):
    index: int
    name: str = Field(description="dotted named_modules() name; 'output' is the whole model")
    type: str
    depth: int
    output_shape: list[int] | None = Field(description="[C, H, W] or [F] for one image")
    params: dict[str, list[int]]
    has_filters: bool = Field(description="a Conv2d: GET .../filters works")
    has_activation: bool = Field(description="its output can be drawn as feature maps")
    calls: int
    in_channels: int | None = None
    out_channels: int | None = None
    kernel_size: list[int] | None = None
    stride: list[int] | None = None
    groups: int | None = None
    depthwise: bool | None = None


class ImageOut(BaseModel):
    id: str = Field(description="sha256 of the image bytes")
    name: str
    kind: str = Field(description="sample | upload")
    width: int
    height: int
    format: str
    bytes: int
    media_type: str
    licence: str | None = None
    source: str | None = None


class PredictionOut(BaseModel):
    index: int
    label: str
    probability: float


class ChannelStatOut(BaseModel):
    index: int
    min: float
    max: float
    mean: float
    std: float


class TopChannelOut(BaseModel):
    index: int
    mean: float
    z: float | None = None  # with ?baseline=: z-score against the collection


class ChannelsOut(BaseModel):
    layer: str
    shape: list[int]
    channels: list[ChannelStatOut]
    top: list[TopChannelOut]
    baseline: dict[str, object] | None = None  # {collection, images, source} with ?baseline=


class StatusOut(BaseModel):
    status: str
    detail: str | None = None
