"""Settings, read once from the environment (prefix ``CONVSCOPE_``) and injected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
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
        "manifest.json and a .safetensors file.",
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

    # Concurrency
    max_concurrent_compute: int = Field(default=2, ge=1)
    max_queue: int = Field(default=32, ge=0)

    # HTTP
    frontend_dir: Path | None = Field(default=_REPO_FRONTEND if _REPO_FRONTEND.is_dir() else None)
    cors_origins: list[str] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
