"""Prometheus metrics, the access log, and admission control, in one pure ASGI middleware.

Each app owns a :class:`Metrics` with its own ``CollectorRegistry`` (tests build many apps;
module-level metric objects would collide). Request metrics are labelled by route template
(``/api/models/{model}/layers``), never by raw path, so label cardinality stays bounded.

Admission control: a request to a route that runs in the threadpool (a plain ``def`` endpoint
or dependency) is refused with 503 and ``Retry-After`` when ``max_inflight_requests`` such
requests are already in progress -- decided on the event loop, before the request waits for a
worker thread. ``async`` routes (``/healthz``, ``/readyz``, ``/metrics``) are never refused and
never wait for a thread, so they stay fast under overload. The compute gate behind it bounds
model computations and their queue (see ``services/gate.py``).

Over 300 lines: admission control must match the route before routing, so the route
table, the per-kind limits and the metrics sit in the one middleware that counts them.
"""

from __future__ import annotations

import collections
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from convscope.api.middleware import Refusal, has_body, run_refusable

access_log = logging.getLogger("convscope.access")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The metric objects of one app, in a registry of their own."""

    def __init__(self, app_state: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "convscope_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "convscope_http_request_duration_seconds",
            "Time from request start to the last response byte, by route template.",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "convscope_http_requests_in_flight",
            "HTTP requests being handled now (all routes).",
            registry=self.registry,
        )
        self.admitted = 0  # threadpool requests in progress (admission control)
        self.admission_rejected = 0
        self.pools: dict[str, Any] = {}  # watchers and uploads, set by Observe
        self.registry.register(_ServiceCollector(app_state, self))


class _ServiceCollector(Collector):
    """Reads the service's own counters at scrape time: gate, caches, models, readiness."""

    def __init__(self, state: Any, metrics: Metrics) -> None:
        self.state = state
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stats = self.state.service.stats()
        yield _gauge(
            "convscope_compute_running", "Model computations running now.", stats.compute_running
        )
        yield _gauge(
            "convscope_compute_queued",
            "Model computations waiting for a slot.",
            stats.compute_queued,
        )
        yield _gauge(
            "convscope_compute_slots", "CONVSCOPE_MAX_CONCURRENT_COMPUTE.", stats.compute_slots
        )
        yield _gauge(
            "convscope_compute_queue_limit", "CONVSCOPE_MAX_QUEUE.", stats.compute_queue_limit
        )
        yield _gauge(
            "convscope_admitted_requests",
            "Threadpool requests in progress (limit CONVSCOPE_MAX_INFLIGHT_REQUESTS).",
            self.metrics.admitted,
        )
        rejected = CounterMetricFamily(
            "convscope_rejected_requests",
            "Requests refused with 503 overloaded: at admission (too many requests in "
            "progress) or at the compute gate (slots and queue full, or waited too long).",
            labels=["stage"],
        )
        rejected.add_metric(["admission"], self.metrics.admission_rejected)
        rejected.add_metric(["compute"], stats.compute_rejected)
        open_now = GaugeMetricFamily(
            "convscope_open_requests",
            "Long-lived requests open now: SSE watchers (CONVSCOPE_MAX_WATCHERS) and bodies "
            "being received (CONVSCOPE_MAX_BODY_UPLOADS).",
            labels=["kind"],
        )
        for kind, pool in self.metrics.pools.items():
            rejected.add_metric([kind], pool.rejected)
            open_now.add_metric([kind], pool.used)
        yield rejected
        yield open_now
        hits = CounterMetricFamily("convscope_cache_hits", "Cache hits.", labels=["cache"])
        misses = CounterMetricFamily(
            "convscope_cache_misses", "Cache misses (values computed).", labels=["cache"]
        )
        size = GaugeMetricFamily("convscope_cache_bytes", "Bytes held.", labels=["cache"])
        for name, cache in stats.caches.items():
            hits.add_metric([name], cache.hits)
            misses.add_metric([name], cache.misses)
            size.add_metric([name], cache.bytes)
        yield from (hits, misses, size)
        failures = CounterMetricFamily(
            "convscope_model_load_failures", "Model loads that failed since start."
        )
        failures.add_metric([], stats.model_load_failures)
        yield failures
        yield _gauge("convscope_models_loaded", "Models in memory.", stats.models_loaded)
        yield _gauge(
            "convscope_models_unavailable",
            "Listed models that cannot be served (missing weights, broken files).",
            stats.models_unavailable,
        )
        ready = self.state.ready.is_set()
        yield _gauge("convscope_ready", "1 once the default model is loaded.", ready)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _is_async(call: Callable[..., Any] | None) -> bool:
    if call is None:
        return True
    if inspect.isclass(call):
        return False
    target = call if inspect.isroutine(call) else type(call).__call__
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def uses_threadpool(dependant: Dependant) -> bool:
    """True when FastAPI runs the endpoint or any of its dependencies in a worker thread."""
    if not _is_async(dependant.call):
        return True
    return any(uses_threadpool(sub) for sub in dependant.dependencies)


def _flat_routes(app: Any) -> list[tuple[BaseRoute, str | None]]:
    """Every route with its full path template, through included routers in any FastAPI."""
    routes = app.router.routes
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI versions that nest routers
    except ImportError:
        return [(r, getattr(r, "path", None)) for r in routes]
    return [(c.original_route, c.path) for c in iter_route_contexts(routes)]


RouteRow = tuple[re.Pattern[str], set[str] | None, str, bool, bool]


def route_table(app: Any) -> list[RouteRow]:
    """``(path regex, methods, label, runs in threadpool, streams)`` in routing order."""
    table: list[RouteRow] = []
    for route, path in _flat_routes(app):
        if isinstance(route, Mount):
            prefix = re.escape(route.path.rstrip("/"))
            table.append((re.compile(f"^{prefix}(/.*)?$"), None, "static", False, False))
            continue
        if path is None:
            continue
        methods = getattr(route, "methods", None)
        if methods and "GET" in methods:
            methods = set(methods) | {"HEAD"}
        threaded = isinstance(route, APIRoute) and uses_threadpool(route.dependant)
        streams = isinstance(route, APIRoute) and route.response_class is StreamingResponse
        table.append((compile_path(path)[0], methods, path, threaded, streams))
    return table


@dataclass
class Limits:
    """The admission bounds (settings ``CONVSCOPE_MAX_INFLIGHT_REQUESTS``, ``..._WATCHERS``,
    ``..._WATCHERS_PER_CLIENT``, ``..._BODY_UPLOADS``, ``..._BODY_UPLOADS_PER_CLIENT``)."""

    inflight: int = 48
    watchers: int = 64
    watchers_per_client: int = 8
    uploads: int = 128
    uploads_per_client: int = 32


class _Pool:
    """Slots of one kind of long-lived work, overall and per client address."""

    def __init__(self, total: int, per_client: int, what: str, setting: str) -> None:
        self.total, self.per_client = total, per_client
        self.what, self.setting = what, setting
        self.by_client: collections.Counter[str] = collections.Counter()
        self.rejected = 0

    @property
    def used(self) -> int:
        return sum(self.by_client.values())

    def take(self, client: str) -> Refusal | None:
        """A slot for ``client``, or the refusal to answer (429 per client, 503 overall)."""
        if self.by_client[client] >= self.per_client:
            self.rejected += 1
            return Refusal(
                429,
                f"too many {self.what} from your address: {self.by_client[client]} open, the "
                f"limit ({self.setting}_PER_CLIENT); close one or retry later",
                f"too_many_{self.what.replace(' ', '_')}",
                [(b"retry-after", b"5")],
            )
        if self.used >= self.total:
            self.rejected += 1
            return Refusal(
                503,
                f"server busy: {self.used} {self.what} open, the limit ({self.setting}); "
                "retry shortly",
                "overloaded",
                [(b"retry-after", b"5")],
            )
        self.by_client[client] += 1
        return None

    def give(self, client: str) -> None:
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]


class Observe:
    """Route-template metrics, an access log line per request, and admission control.

    Three kinds of work are admitted separately, so that slow or idle clients cannot starve
    the API: compute (a threadpool route, from the moment its body is in: at most
    ``inflight``), watchers (a streaming route, e.g. SSE job events: ``watchers`` overall,
    ``watchers_per_client`` per address) and bodies being received (``uploads``,
    ``uploads_per_client``). A request receiving its body holds an upload slot, not a compute
    one; body timeouts are ``BodyLimit``'s.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics, max_inflight: int, limits: Limits | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limits = limits or Limits(inflight=max_inflight)
        self.max_inflight = max_inflight
        self.watchers = _Pool(
            self.limits.watchers,
            self.limits.watchers_per_client,
            "watchers",
            "CONVSCOPE_MAX_WATCHERS",
        )
        self.uploads = _Pool(
            self.limits.uploads,
            self.limits.uploads_per_client,
            "uploads",
            "CONVSCOPE_MAX_BODY_UPLOADS",
        )
        metrics.pools = {"watchers": self.watchers, "uploads": self.uploads}
        self._table: list[RouteRow] | None = None

    def _route(self, scope: Scope) -> tuple[str, bool, bool]:
        """(route template, runs in the threadpool, streams) for the request; before routing."""
        if self._table is None:
            self._table = route_table(scope["app"])
        path, method = scope["path"], scope["method"]
        for pattern, methods, template, threaded, streams in self._table:
            if pattern.match(path) and (methods is None or method in methods):
                return template, threaded, streams
        return "unmatched", False, False

    def _admit(self) -> Refusal | None:
        metrics = self.metrics
        if metrics.admitted >= self.max_inflight:
            metrics.admission_rejected += 1
            return Refusal(
                503,
                f"server busy: {metrics.admitted} requests in progress, the limit "
                "(CONVSCOPE_MAX_INFLIGHT_REQUESTS); retry shortly",
                "overloaded",
                [(b"retry-after", b"1")],
            )
        metrics.admitted += 1
        return None

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Admit the request by kind and run it; returns the status sent."""
        _, threaded, streams = self._route(scope)
        client = (scope.get("client") or ("-", 0))[0]
        if streams:
            refusal = self.watchers.take(client)
            if refusal is not None:
                await refusal.send(send)
                return refusal.status
            try:
                return await run_refusable(self.app, scope, receive, send)
            finally:
                self.watchers.give(client)
        # Routes of these methods never read a body: admitted as compute at once.
        if not has_body(scope) or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            if not threaded:
                return await run_refusable(self.app, scope, receive, send)
            refusal = self._admit()
            if refusal is not None:
                await refusal.send(send)
                return refusal.status
            try:
                return await run_refusable(self.app, scope, receive, send)
            finally:
                self.metrics.admitted -= 1
        # A body to receive: an upload slot while it arrives, then a compute slot.
        refusal = self.uploads.take(client)
        if refusal is not None:
            await refusal.send(send)
            return refusal.status
        uploading, admitted = True, False

        async def admitting_receive() -> Message:
            nonlocal uploading, admitted
            message = await receive()
            body_done = message["type"] != "http.request" or not message.get("more_body")
            if uploading and body_done:
                uploading = False
                self.uploads.give(client)
                if not threaded:  # an async route (a model upload): no thread to admit to
                    return message
                refused = self._admit()
                if refused is not None:
                    raise refused
                admitted = True
            return message

        try:
            return await run_refusable(self.app, scope, admitting_receive, send)
        finally:
            if uploading:
                self.uploads.give(client)
            if admitted:
                self.metrics.admitted -= 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = self._route(scope)[0]
        method = scope["method"]
        status = 500
        metrics = self.metrics
        metrics.in_flight.inc()
        try:
            status = await self._handle(scope, receive, send) or 500
        finally:
            metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            metrics.requests.labels(method, route, str(status)).inc()
            metrics.latency.labels(method, route).observe(seconds)
            access_log.info(
                "%s %s %d",
                method,
                route,
                status,
                extra={
                    "request_id": scope.get("state", {}).get("request_id"),
                    "method": method,
                    "path": scope["path"][:200],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                },
            )
