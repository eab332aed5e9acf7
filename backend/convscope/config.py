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
    max_queue: int = Field(default=32, ge=0)
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
        ],
        description="Architectures an uploaded model may use ('torchvision/<name>' or "
        "'timm/<name>', shell-style wildcards allowed).",
    )
    models_poll_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How often each replica checks the models folder for models uploaded or "
        "deleted through another replica; 0 turns polling off.",
    )

    # HTTP
    frontend_dir: Path | None = Field(default=_REPO_FRONTEND if _REPO_FRONTEND.is_dir() else None)
    cors_origins: list[str] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        default="text", description="'json': one JSON object per line, with the request id."
    )
    metrics_enabled: bool = Field(default=True, description="Serve Prometheus GET /metrics.")

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
