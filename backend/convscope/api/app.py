"""The FastAPI application: routes, error mapping, middleware and the bundled web UI."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from convscope import __version__
from convscope.api import errors
from convscope.api.middleware import BodyLimit, SecurityHeaders
from convscope.api.routes import activations, health, images, models
from convscope.config import Settings
from convscope.services.visualize import Convscope

log = logging.getLogger(__name__)

DESCRIPTION = """
See what a convolutional network has learned: conv filters, per-layer feature maps,
predictions, for the embedded EfficientNet-Lite0, torchvision models and your own.

Errors are JSON `{"detail": "...", "code": "..."}`; `code` is stable.
Binary formats: `image/png` grids and `application/x-npy` float32 arrays.
"""


def _load_default(app: FastAPI) -> None:
    try:
        app.state.service.load_default()
        app.state.ready.set()
    except Exception as exc:
        log.exception("the default model failed to load")
        app.state.load_error = str(getattr(exc, "detail", exc))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The default model loads in the background: /healthz answers at once, /readyz when ready.
    loader = threading.Thread(target=_load_default, args=(app,), name="model-loader", daemon=True)
    loader.start()
    yield


def create_app(settings: Settings | None = None, service: Convscope | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="convscope",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service or Convscope(settings)
    app.state.ready = threading.Event()
    app.state.load_error = None
    errors.install(app)
    for router in (health.router, models.router, images.router, activations.router):
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + 64 * 1024)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Convscope-Channels", "X-Convscope-Grid"],
        )
    app.add_middleware(SecurityHeaders)
    if settings.frontend_dir is not None and settings.frontend_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.frontend_dir, html=True), name="frontend")
    return app
