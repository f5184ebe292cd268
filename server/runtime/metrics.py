"""Prometheus metrics: one registry per app, HTTP request metrics by route template and status.

Every metric name any service exports is listed in `METRIC_NAMES`, so dashboards and alert
rules can be checked against what the code really exports.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS_TOTAL = "am_http_requests_total"
HTTP_REQUEST_DURATION = "am_http_request_duration_seconds"

# Names as Prometheus exposes them (counters gain _total, histograms _bucket/_sum/_count).
METRIC_NAMES: set[str] = {HTTP_REQUESTS_TOTAL, HTTP_REQUEST_DURATION}


def register_metric_name(name: str) -> str:
    """Record a metric name so the dashboard/alert consistency test knows it exists."""
    METRIC_NAMES.add(name)
    return name


class HttpMetrics:
    """Request count and latency, labelled with the service, route template, method and status."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.service = service
        self.requests = Counter(
            HTTP_REQUESTS_TOTAL.removesuffix("_total"),
            "HTTP requests handled",
            ["service", "route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            HTTP_REQUEST_DURATION,
            "HTTP request latency",
            ["service", "route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:  # labels() takes a lock and builds a key: once per route and answer, not per request
            children = self._children[route, method, status] = (
                self.requests.labels(self.service, route, method, str(status)),
                self.latency.labels(self.service, route, method))
        children[0].inc()
        children[1].observe(seconds)


class MetricsMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware overhead) that times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.observe(template, scope["method"], status, time.perf_counter() - started)


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
