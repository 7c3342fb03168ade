"""The ingress's metrics, trace context and log context for every HTTP request.

:class:`Telemetry` is a pure ASGI middleware (no body buffering): it counts
requests by method, route template and status, the body bytes as they
stream through ``receive``, and times each answer — the time to the 202 of
``POST /v1/features`` separately. It also opens the request's hop of the
trace (:func:`geobus.tracing.span`, from the client's ``traceparent`` or a new
trace), which is current while the endpoint runs — so the job's spool
metadata and the conversion's messages carry it — and answers it in a
``traceparent`` response header. ``GET /metrics`` is :func:`metrics_endpoint`.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geobus import metrics, tracing
from geobus.ingress.resources import Resources

ACCEPT_ROUTE = "/v1/features"
UNMATCHED = "unmatched"


def route_of(scope: Scope) -> str:
    """The template of the route that served ``scope`` (a fixed word when none matched)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class Telemetry:
    """Counts, times and traces every HTTP request of the application it wraps."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request through the wrapped app, recording what happened."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        received = 0
        header = _header(scope, b"traceparent")

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        with tracing.span(f"{scope['method']} ingress", header) as own:

            async def tracing_send(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = list(message.get("headers", []))
                    headers.append((b"traceparent", own.encode()))
                    message = {**message, "headers": headers}
                await send(message)

            try:
                await self.app(scope, counting_receive, tracing_send)
            finally:
                self._record(scope, status, received, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, status: int, received: int, seconds: float) -> None:
        method = scope["method"]
        route = route_of(scope)
        metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
        metrics.HTTP_REQUEST_DURATION.labels(method, route).observe(seconds)
        if received:
            metrics.HTTP_REQUEST_BYTES.labels(route).inc(received)
        if route == ACCEPT_ROUTE and method == "POST" and status == 202:
            metrics.ACCEPT_SECONDS.observe(seconds)
            metrics.JOBS_ACCEPTED.inc()


def _header(scope: Scope, name: bytes) -> bytes | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for key, value in headers:
        if key == name:
            return value
    return None


async def metrics_endpoint(request: Request) -> Response:
    """The ingress's metrics in the Prometheus text format."""
    resources: Resources | None = getattr(request.state, "resources", None)
    if resources is not None:
        # Read at scrape time: the admission sums what it holds, from memory.
        metrics.SPOOL_BYTES.set(resources.admission.spool_used())
    body = await asyncio.to_thread(metrics.render)
    return Response(body, media_type=metrics.CONTENT_TYPE)
