"""Domain errors. They carry data; ``api/errors.py`` alone maps them to HTTP.

Over 300 lines: one short class per stable error code, each with the data its message
needs; one file is where a client's ``code`` is looked up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConvscopeError(Exception):
    """Base class: ``code`` is stable and machine-readable, ``detail`` is for people."""

    code = "error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


def _choices(values: Iterable[str], limit: int = 12) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


class UnknownModelError(ConvscopeError):
    code = "unknown_model"

    def __init__(self, model: str, known: Iterable[str]) -> None:
        super().__init__(
            f"unknown model {model!r}; expected one of {_choices(known)} (see GET /api/models)",
            model=model,
        )


class ModelUnavailableError(ConvscopeError):
    code = "model_unavailable"

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"model {model!r} is not available: {reason}", model=model)


class UnknownLayerError(ConvscopeError):
    code = "unknown_layer"

    def __init__(self, model: str, layer: str) -> None:
        super().__init__(
            f"unknown layer {layer!r} for model {model!r}; "
            f"see GET /api/models/{model}/layers for the valid names",
            model=model,
            layer=layer,
        )


class NotAConvLayerError(ConvscopeError):
    code = "not_a_conv_layer"

    def __init__(self, model: str, layer: str, layer_type: str) -> None:
        super().__init__(
            f"layer {layer!r} of model {model!r} is a {layer_type}, which has no conv filters; "
            f"expected a Conv2d (layers with has_filters=true in GET /api/models/{model}/layers)",
            model=model,
            layer=layer,
        )


class NoActivationError(ConvscopeError):
    code = "no_activation"

    def __init__(self, model: str, layer: str, why: str) -> None:
        super().__init__(f"layer {layer!r} of model {model!r} has no feature map: {why}")


class UnknownImageError(ConvscopeError):
    code = "unknown_image"

    def __init__(self, image_id: str) -> None:
        super().__init__(
            f"unknown image {image_id!r}; upload one with POST /api/images or pick one from "
            "GET /api/images",
            image=image_id,
        )


class InvalidImageError(ConvscopeError):
    """The bytes are not an image we can decode (422) or not an image at all (415)."""

    code = "invalid_image"

    def __init__(self, detail: str, *, unsupported_type: bool = False) -> None:
        super().__init__(detail)
        self.unsupported_type = unsupported_type
        if unsupported_type:
            self.code = "unsupported_image_type"


class ImageTooLargeError(ConvscopeError):
    code = "image_too_large"


class PayloadTooLargeError(ConvscopeError):
    code = "payload_too_large"


class InvalidParameterError(ConvscopeError):
    code = "invalid_parameter"

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}", parameter=name)


class ResponseTooLargeError(ConvscopeError):
    code = "response_too_large"


class InvalidModelFileError(ConvscopeError):
    code = "invalid_model"


class OverloadedError(ConvscopeError):
    code = "overloaded"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class CancelledError(ConvscopeError):
    """A long computation (an optimisation job) was cancelled before it finished."""

    code = "cancelled"


class UnknownJobError(ConvscopeError):
    code = "unknown_job"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"unknown job {job_id!r}; it may have expired. Start one with "
            "POST /api/models/{model}/optimize",
            job=job_id,
        )


class JobNotFinishedError(ConvscopeError):
    """The job has no result (yet): ``state`` is queued, running, failed or cancelled."""

    code = "job_not_finished"

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(
            f"job {job_id!r} is {state}; expected a done job. Poll GET /api/jobs/{job_id} "
            "or stream GET /api/jobs/{job_id}/events",
            job=job_id,
            state=state,
        )


class ModelUploadDisabledError(ConvscopeError):
    """Model upload and delete over HTTP are off: no ``CONVSCOPE_MODEL_UPLOAD_TOKEN`` is set."""

    code = "model_upload_disabled"

    def __init__(self) -> None:
        super().__init__(
            "model upload over HTTP is disabled; the operator enables it by setting "
            "CONVSCOPE_MODEL_UPLOAD_TOKEN (or puts model folders in CONVSCOPE_MODELS_DIR)"
        )


class UnauthorizedError(ConvscopeError):
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__(
            "missing or wrong API token; expected the header 'Authorization: Bearer <token>'"
        )


class ModelNotDeletableError(ConvscopeError):
    code = "model_not_deletable"

    def __init__(self, model: str, source: str) -> None:
        super().__init__(
            f"model {model!r} is a {source} model; only models uploaded with POST /api/models "
            "can be deleted",
            model=model,
        )


class ImageNotDeletableError(ConvscopeError):
    code = "image_not_deletable"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"image {name!r} is a bundled sample; only your own uploads can be deleted",
            image=name,
        )


class UnsupportedOperatorError(ConvscopeError):
    """An ONNX graph holds an operator that cannot be converted to PyTorch."""

    code = "unsupported_operator"

    def __init__(self, operator: str, detail: str) -> None:
        super().__init__(detail, operator=operator)


class StorageError(ConvscopeError):
    """The shared store (data or models folder) cannot be written: full, read-only, gone."""

    code = "storage_unavailable"


# --- weights (expanded weights, filter analysis, compare) ---------------------------------


class NotOnImageError(ConvscopeError):
    """Filter analysis needs a conv layer that reads the input image itself."""

    code = "not_on_image"

    def __init__(self, model: str, layer: str, why: str) -> None:
        super().__init__(
            f"layer {layer!r} of model {model!r} {why}; expected a conv layer whose input is "
            f"the image (the first conv, e.g. conv_stem or conv1; see GET /api/models/{model}/"
            "layers)",
            model=model,
            layer=layer,
        )


class ArchitectureMismatchError(ConvscopeError):
    """Two models compared layer by layer must share one architecture."""

    code = "architecture_mismatch"

    def __init__(self, model_a: str, model_b: str, layer: str, why: str) -> None:
        super().__init__(
            f"models {model_a!r} and {model_b!r} differ first at layer {layer!r}: {why}; "
            "expected two checkpoints of the same architecture",
            layer=layer,
        )


# --- collections and dataset examples ---------------------------------------------------


class UnknownCollectionError(ConvscopeError):
    code = "unknown_collection"

    def __init__(self, cid: str) -> None:
        super().__init__(
            f"unknown collection {cid!r}; see GET /api/collections, or create one with "
            "POST /api/collections",
            collection=cid,
        )


class EmptyCollectionError(ConvscopeError):
    code = "empty_collection"

    def __init__(self, cid: str) -> None:
        super().__init__(
            f"collection {cid!r} has no images to index; add some with "
            f"POST /api/collections/{cid}/images",
            collection=cid,
        )


class IndexNotFoundError(ConvscopeError):
    code = "index_not_found"

    def __init__(self, model: str, cid: str) -> None:
        super().__init__(
            f"collection {cid!r} has no index for model {model!r} (with its current weights "
            f"and preprocessing); build it with POST /api/models/{model}/collections/{cid}/index",
            model=model,
            collection=cid,
        )


class LayerNotIndexedError(ConvscopeError):
    code = "layer_not_indexed"

    def __init__(self, model: str, cid: str, layer: str) -> None:
        super().__init__(
            f"the index of collection {cid!r} for model {model!r} does not cover layer "
            f"{layer!r}; index it with POST /api/models/{model}/collections/{cid}/index and "
            f'{{"layers": ["{layer}"]}} (or no layers: every spatial module)',
            model=model,
            collection=cid,
            layer=layer,
        )


class NotSpatialLayerError(ConvscopeError):
    code = "not_spatial"

    def __init__(self, model: str, layer: str, shape: object) -> None:
        super().__init__(
            f"layer {layer!r} of model {model!r} has output shape {shape}, not a spatial "
            f"[C, H, W] map; expected a layer with a 3-dimensional output_shape in "
            f"GET /api/models/{model}/layers",
            model=model,
            layer=layer,
        )


class ArchiveTooLargeError(ConvscopeError):
    """An archive over the member-count or uncompressed-size bound (a bomb)."""

    code = "archive_too_large"


class InvalidArchiveError(ConvscopeError):
    code = "invalid_archive"


class CollectionPathError(ConvscopeError):
    """A server folder outside the allow-list (CONVSCOPE_COLLECTION_ROOTS), or not a folder."""

    code = "collection_path_refused"


# --- hardening (issue 10) -------------------------------------------------------------------


class JobTokenError(ConvscopeError):
    """Cancelling a job needs the control token its submitter got (``token`` in the 202)."""

    code = "job_token_invalid"

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"cancelling job {job_id!r} needs the control token returned to its submitter "
            "(the 'token' of POST .../optimize), sent as the header 'X-Job-Token'",
            job=job_id,
        )


class StorageFullError(StorageError):
    """The disk holding the data or models folder is full (or over its quota)."""

    code = "storage_full"


class JsonTooDeepError(ConvscopeError):
    """A JSON document nested deeper than ``CONVSCOPE_MAX_JSON_DEPTH`` (refused unparsed)."""

    code = "json_too_deep"

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(
            f"{what}: JSON nested deeper than {limit} levels (CONVSCOPE_MAX_JSON_DEPTH)",
            parameter=what,
        )
