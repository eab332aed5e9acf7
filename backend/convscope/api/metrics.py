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
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from convscope.api.middleware import send_error

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
        yield rejected
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


RouteRow = tuple[re.Pattern[str], set[str] | None, str, bool]


def route_table(app: Any) -> list[RouteRow]:
    """``(path regex, methods, label, runs in threadpool)`` in routing order."""
    table: list[RouteRow] = []
    for route, path in _flat_routes(app):
        if isinstance(route, Mount):
            prefix = re.escape(route.path.rstrip("/"))
            table.append((re.compile(f"^{prefix}(/.*)?$"), None, "static", False))
            continue
        if path is None:
            continue
        methods = getattr(route, "methods", None)
        if methods and "GET" in methods:
            methods = set(methods) | {"HEAD"}
        threaded = isinstance(route, APIRoute) and uses_threadpool(route.dependant)
        table.append((compile_path(path)[0], methods, path, threaded))
    return table


class Observe:
    """Route-template metrics, an access log line per request, and admission control."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_inflight: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_inflight = max_inflight
        self._table: list[RouteRow] | None = None

    def _route(self, scope: Scope) -> tuple[str, bool]:
        """(route template, runs in the threadpool) for the request; matched before routing."""
        if self._table is None:
            self._table = route_table(scope["app"])
        path, method = scope["path"], scope["method"]
        for pattern, methods, template, threaded in self._table:
            if pattern.match(path) and (methods is None or method in methods):
                return template, threaded
        return "unmatched", False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route, threaded = self._route(scope)
        method = scope["method"]
        status = 500
        metrics = self.metrics

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.in_flight.inc()
        try:
            if threaded and metrics.admitted >= self.max_inflight:
                metrics.admission_rejected += 1
                await _overloaded(observed_send, metrics.admitted)
            elif threaded:
                metrics.admitted += 1
                try:
                    await self.app(scope, receive, observed_send)
                finally:
                    metrics.admitted -= 1
            else:
                await self.app(scope, receive, observed_send)
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


async def _overloaded(send: Send, admitted: int) -> None:
    await send_error(
        send,
        503,
        f"server busy: {admitted} requests in progress, the limit "
        "(CONVSCOPE_MAX_INFLIGHT_REQUESTS); retry shortly",
        "overloaded",
        [(b"retry-after", b"1")],
    )
