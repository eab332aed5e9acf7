"""Settings, read once from the environment (prefix ``CONVSCOPE_``) and injected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_FRONTEND = Path(__file__).resolve().parents[2] / "frontend"


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "convscope"


class Settings(BaseSettings):
    """Every knob of the service. Each one is an environment variable ``CONVSCOPE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CONVSCOPE_", env_file=None, extra="ignore")

    # Models
    default_model: str = "efficientnet_lite0"
    preload: list[str] = Field(
        default_factory=list, description="Models loaded at start besides the default."
    )
    weights_dir: Path | None = Field(
        default=None,
        description="Folder with torchvision weight files (same file names as torchvision's "
        "cache, e.g. alexnet-owt-7be5be79.pth), searched before $TORCH_HOME/hub/checkpoints.",
    )
    models_dir: Path | None = Field(
        default=None,
        description="Folder of user models: one sub-folder per model with "
        "manifest.json and a .safetensors file. Default: <data_dir>/models.",
    )
    allow_download: bool = Field(
        default=False, description="Let torchvision download missing weights into its cache."
    )
    untrained_models: bool = Field(
        default=False,
        description="Also list every torchvision architecture with random weights, labelled "
        "'untrained', for exploring architectures.",
    )
    verify_weights_hash: bool = Field(
        default=True, description="Check torchvision weight files against the hash in their name."
    )
    max_loaded_models: int = Field(default=4, ge=1)
    device: str = Field(default="cpu", description="'cpu', 'cuda', 'cuda:1' or 'auto'.")
    torch_threads: int = Field(default=0, ge=0, description="0: one per available core.")

    # Storage
    data_dir: Path = Field(default_factory=_default_data_dir)
    max_images: int = Field(default=1000, ge=1)
    max_image_store_bytes: int = Field(default=512 * 1024**2, ge=1024)

    # Caches
    activation_cache_bytes: int = Field(default=768 * 1024**2, ge=0)
    render_cache_bytes: int = Field(default=64 * 1024**2, ge=0)

    # Input bounds
    max_upload_bytes: int = Field(default=20 * 1024**2, ge=1024)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    max_json_floats: int = Field(default=2_000_000, ge=1)
    max_grid_pixels: int = Field(default=64_000_000, ge=1)
    max_scale: int = Field(default=32, ge=1)

    # Feature visualisation jobs
    max_running_jobs: int = Field(default=1, ge=1, description="Optimisations run at once.")
    max_queued_jobs: int = Field(default=16, ge=0, description="Jobs waiting; beyond: 503.")
    max_optimize_steps: int = Field(default=1024, ge=1)
    max_optimize_size: int = Field(default=384, ge=16)
    max_optimize_batch: int = Field(default=16, ge=1)

    # Concurrency
    max_concurrent_compute: int = Field(default=2, ge=1)
    max_queue: int = Field(
        default=16,
        ge=0,
        description="Computations waiting for a slot; beyond: 503 overloaded with Retry-After. "
        "Bounds the wait of an admitted request to about (slots + queue) forward passes.",
    )
    max_inflight_requests: int = Field(
        default=48,
        ge=1,
        description="Requests to threadpool (non-async) routes handled at once; beyond it 503 "
        "with Retry-After before the request takes a worker thread. The threadpool gets this "
        "many threads plus 8.",
    )

    # Model upload over HTTP (POST/DELETE /api/models): off unless a token is set.
    model_upload_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for POST /api/models and DELETE /api/models/{name}; "
        "unset: both answer 403.",
    )
    max_model_upload_bytes: int = Field(default=256 * 1024**2, ge=1024)
    max_num_classes: int = Field(default=100_000, ge=1)
    model_upload_architectures: list[str] = Field(
        default_factory=lambda: [
            "torchvision/alexnet",
            "torchvision/vgg*",
            "torchvision/resnet*",
            "torchvision/resnext*",
            "torchvision/wide_resnet*",
            "torchvision/googlenet",
            "torchvision/densenet*",
            "torchvision/squeezenet*",
            "torchvision/mobilenet_v2",
            "torchvision/mobilenet_v3_*",
            "torchvision/efficientnet_b*",
            "torchvision/convnext_*",
            "torchvision/regnet_*",
            "torchvision/shufflenet_*",
            "torchvision/mnasnet*",
            "timm/resnet*",
            "timm/efficientnet_b*",
            "timm/tf_efficientnet_lite*",
            "timm/mobilenetv3_*",
            "timm/convnext_*",
            "onnx",  # an ONNX graph, converted by onnx2torch (services/models/onnx.py)
        ],
        description="Architectures an uploaded model may use ('torchvision/<name>', "
        "'timm/<name>', shell-style wildcards allowed, or 'onnx').",
    )
    models_poll_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How often each replica checks the models folder for models uploaded or "
        "deleted through another replica; 0 turns polling off.",
    )

    # Cluster (the optional `convscope[cluster]` extra; docs/operations.md, "On a Ray cluster")
    ray_address: str | None = Field(
        default=None,
        description="A Ray cluster address (e.g. 127.0.0.1:6379): jobs then run as Ray tasks "
        "and their table lives in the cluster, so every API process connected to it answers "
        "for every job. data_dir must be one shared filesystem path on every node. "
        "Unset: one process, Ray is never imported.",
    )
    ray_namespace: str = Field(default="convscope", description="Ray namespace of the job table.")
    ray_job_cpus: float = Field(default=1.0, gt=0, description="CPUs each Ray job declares.")
    ray_job_gpus: float = Field(default=0.0, ge=0, description="GPUs each Ray job declares.")

    # HTTP
    frontend_dir: Path | None = Field(default=_REPO_FRONTEND if _REPO_FRONTEND.is_dir() else None)
    cors_origins: list[str] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="'json': one JSON object per line, with the request id."
    )
    metrics_enabled: bool = Field(default=True, description="Serve Prometheus GET /metrics.")

    # --- Hardening (issue 10): every bound below is in docs/operations.md --------------------
    max_model_parameters: int = Field(
        default=200_000_000,
        ge=1,
        description="Parameters an uploaded or operator model may have, counted on the meta "
        "device before any real weight is allocated.",
    )
    trusted_hosts: list[str] | None = Field(
        default=None,
        description="Host header values served ('*.example.org' wildcards). Unset: loopback "
        "names only when `convscope serve` binds a loopback address, any host otherwise.",
    )
    max_watchers: int = Field(default=64, ge=1, description="Open SSE job streams, overall.")
    max_watchers_per_client: int = Field(default=8, ge=1, description="Per client address.")
    max_body_uploads: int = Field(
        default=128, ge=1, description="Requests sending a body at once, overall."
    )
    max_body_uploads_per_client: int = Field(default=32, ge=1, description="Per client address.")
    max_json_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="A JSON request body (optimize, deepdream)."
    )
    body_read_timeout_seconds: float = Field(
        default=120.0, gt=0, description="A request body must arrive within this time."
    )
    body_idle_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Longest pause between two parts of a request body."
    )
    watch_max_seconds: float = Field(
        default=1800.0, gt=0, description="An SSE job stream is closed after this long."
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A request line and headers must arrive within this time (408 after).",
    )
    max_pending_connections: int = Field(
        default=256, ge=1, description="Connections still sending their headers, overall."
    )
    max_pending_connections_per_client: int = Field(
        default=16, ge=1, description="Per client address (a trusted proxy is not a client)."
    )
    max_json_depth: int = Field(default=32, ge=2, description="Nesting of a JSON body or field.")
    max_job_results: int = Field(default=2000, ge=1, description="Job result files kept.")
    max_job_results_bytes: int = Field(default=512 * 1024**2, ge=1024)
    job_results_max_age_seconds: float = Field(default=30 * 86400.0, gt=0)
    janitor_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How often leftovers (temporary files, staging folders, orphan blobs, "
        "old results) are collected; 0: only at start.",
    )

    # --- Collections and dataset examples (issue 11; docs/operations.md) --------------------
    collection_roots: list[Path] = Field(
        default_factory=list,
        description="Server folders a collection may be filled from (POST /api/collections "
        "with {root, path}); a client names a root by its folder name, never a server path.",
    )
    max_collection_upload_bytes: int = Field(
        default=1024**3, ge=1024, description="Body of one POST /api/collections/{cid}/images."
    )
    max_collection_members: int = Field(
        default=20_000, ge=1, description="Files of one upload, archive or server folder."
    )
    max_collection_bytes: int = Field(
        default=8 * 1024**3,
        ge=1024,
        description="Uncompressed bytes of one archive or server folder (archive bombs).",
    )
    builtin_collection: bool = Field(
        default=True, description="Create the small built-in collection of sample photos."
    )

    @model_validator(mode="after")
    def _models_dir_in_data_dir(self) -> Settings:
        # Uploaded models live next to uploaded images by default: one shared volume.
        if self.models_dir is None:
            self.models_dir = self.data_dir / "models"
        return self

    @property
    def models_path(self) -> Path:
        """``models_dir`` as set or defaulted by the validator, typed as a plain ``Path``."""
        return self.models_dir or self.data_dir / "models"
