"""The FastAPI application: routes, error mapping, middleware and the bundled web UI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from convscope import __version__
from convscope.api import errors
from convscope.api.deps import known_query_only
from convscope.api.metrics import Limits, Metrics, Observe
from convscope.api.middleware import (
    BodyLimit,
    SecurityHeaders,
    TrustedHosts,
    default_trusted_hosts,
)
from convscope.api.routes import activations, admin, explain, health, images, models
from convscope.api.routes import collections as collections_route
from convscope.api.routes import metrics as metrics_route
from convscope.api.routes import weights as weights_route
from convscope.config import Settings
from convscope.render import legend
from convscope.services.facade import Convscope

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


def _models_stamp(folder: Path) -> int:
    try:
        return folder.stat().st_mtime_ns
    except OSError:
        return 0


async def _poll_models(app: FastAPI, seconds: float) -> None:
    """Refresh the registry when the shared models folder changes (another replica's upload)."""
    folder = app.state.settings.models_path
    seen = _models_stamp(folder)
    while True:
        await asyncio.sleep(seconds)
        stamp = await anyio.to_thread.run_sync(_models_stamp, folder)
        if stamp != seen:
            seen = stamp
            try:
                await anyio.to_thread.run_sync(app.state.service.refresh_models)
            except Exception:
                log.exception("refreshing the model list failed")


async def _janitor(app: FastAPI, seconds: float) -> None:
    """Collect leftovers (old results, temporary files, orphans, staging) now and every
    ``seconds`` (CONVSCOPE_JANITOR_SECONDS; 0: only now)."""
    while True:
        try:
            removed = await anyio.to_thread.run_sync(app.state.service.collect_leftovers)
            if any(removed.values()):
                log.info("janitor removed %s", removed)
        except Exception:
            log.exception("collecting leftovers failed")
        if seconds <= 0:
            return
        await asyncio.sleep(seconds)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Admission control (api/metrics.py) admits at most max_inflight_requests threadpool
    # requests, so the threadpool never makes an admitted request wait; 8 spare threads for
    # static files and multipart spooling.
    settings: Settings = app.state.settings
    anyio.to_thread.current_default_thread_limiter().total_tokens = (
        settings.max_inflight_requests + 8
    )
    # The default model loads in the background: /healthz answers at once, /readyz when ready.
    loader = threading.Thread(target=_load_default, args=(app,), name="model-loader", daemon=True)
    loader.start()
    janitor = asyncio.create_task(_janitor(app, settings.janitor_seconds))
    poller = None
    if settings.models_poll_seconds > 0:
        poller = asyncio.create_task(_poll_models(app, settings.models_poll_seconds))
    yield
    if app.state.owns_service:  # a service handed in (tests, Serve) is its owner's to stop
        app.state.service.shutdown()
    janitor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await janitor
    if poller is not None:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller


def create_app(
    settings: Settings | None = None,
    service: Convscope | None = None,
    *,
    bind_host: str | None = None,
) -> FastAPI:
    """The app; ``bind_host`` (what ``convscope serve`` listens on) picks the default
    trusted hosts when ``CONVSCOPE_TRUSTED_HOSTS`` is unset (see ``default_trusted_hosts``)."""
    settings = settings or Settings()
    app = FastAPI(
        title="convscope",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(known_query_only)],
    )
    app.state.settings = settings
    app.state.owns_service = service is None
    app.state.service = service or Convscope(settings)
    app.state.ready = threading.Event()
    app.state.load_error = None
    app.state.metrics = Metrics(app.state)
    errors.install(app)
    for router in (health.router, models.router, images.router, activations.router, explain.router):
        app.include_router(router)
    app.include_router(admin.router)
    app.include_router(collections_route.router)
    app.include_router(weights_route.router)
    if settings.metrics_enabled:
        app.include_router(metrics_route.router)
    form_overhead = 64 * 1024
    app.add_middleware(
        BodyLimit,
        limit=settings.max_upload_bytes + form_overhead,
        overrides={
            ("POST", "/api/models"): settings.max_model_upload_bytes + form_overhead,
            ("POST", "/api/collections/*/images"): settings.max_collection_upload_bytes,
        },
        json_limit=settings.max_json_body_bytes,
        json_depth=settings.max_json_depth,
        read_timeout=settings.body_read_timeout_seconds,
        idle_timeout=settings.body_idle_timeout_seconds,
    )
    app.add_middleware(
        Observe,
        metrics=app.state.metrics,
        max_inflight=settings.max_inflight_requests,
        limits=Limits(
            inflight=settings.max_inflight_requests,
            watchers=settings.max_watchers,
            watchers_per_client=settings.max_watchers_per_client,
            uploads=settings.max_body_uploads,
            uploads_per_client=settings.max_body_uploads_per_client,
        ),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=["X-Convscope-Channels", "X-Convscope-Grid", *legend.HEADERS],
        )
    trusted = settings.trusted_hosts or default_trusted_hosts(bind_host)
    if "*" not in trusted:
        app.add_middleware(TrustedHosts, hosts=trusted)
    app.add_middleware(SecurityHeaders)
    if settings.frontend_dir is not None and settings.frontend_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.frontend_dir, html=True), name="frontend")
    return app
