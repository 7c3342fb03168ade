"""RFC 9457 problem documents: every error the ingress answers is one.

:func:`problem` builds the response; :data:`EXCEPTION_HANDLERS` makes
Starlette's own errors (404, 405 with ``Allow``, unexpected 500s) answer
with problem documents too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from geobus.errors import TransientError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
# Problem types geobus defines; "about:blank" stands for the plain HTTP meaning.
TYPE_PREFIX = "urn:geobus:problem:"


class ProblemResponse(JSONResponse):
    """A JSON response served as ``application/problem+json``."""

    media_type = MEDIA_TYPE


def problem(
    status: int,
    detail: str,
    *,
    instance: str,
    code: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: object,
) -> ProblemResponse:
    """An RFC 9457 problem response; ``code`` names a geobus problem type."""
    body: dict[str, object] = {
        "type": TYPE_PREFIX + code if code else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    body.update(extra)
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.detail != HTTPStatus(exc.status_code).phrase else ""
    if not detail:
        detail = {
            404: f"nothing is served at {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, HTTPStatus(exc.status_code).description)
    return problem(exc.status_code, detail, instance=request.url.path, headers=exc.headers)


async def _transient(request: Request, exc: Exception) -> Response:
    log.warning("dependency unavailable on %s: %s", request.url.path, exc)
    return problem(
        503,
        f"a dependency is unavailable, retry later: {exc}",
        instance=request.url.path,
        code="unavailable",
        headers={"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log, never to the client.
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "an unexpected error occurred", instance=request.url.path)


EXCEPTION_HANDLERS: dict[type[Exception] | int, ExceptionHandler] = {
    HTTPException: _http_exception,
    TransientError: _transient,
    Exception: _unexpected,
}
