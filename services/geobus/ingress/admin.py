"""The admin endpoints: the job listing and the dead letters, behind the admin token.

- ``GET /v1/jobs?limit=&offset=&status=``: every job, newest first, paged;
- ``GET /v1/deadletters?stage=``: per stage, the count of dead letters by
  reason and error class (what ``geobus dlq ls --json`` prints);
- ``GET /v1/deadletters/{message_id}?stage=``: one dead letter decoded (what
  ``geobus dlq show --json`` prints);
- ``POST /v1/deadletters/{message_id}/replay?stage=``: republish it to where
  it came from (``geobus dlq replay --json``).

Each needs ``Authorization: Bearer <GEOBUS_ADMIN_TOKEN>``
(:mod:`geobus.ingress.auth`). ``GET /v1/jobs/{id}`` and its rejects are not
admin endpoints: the job id is a random UUID (version 4, 122 random bits)
and knowing it is what entitles a client to read the job.

The dead-letter endpoints reach the broker through :class:`DeadLetters`; the
real one (:class:`BrokerDeadLetters`) runs :mod:`geobus.dlq` on connections
of its own, opened per request and closed before the answer, so that it
never shares (or blocks) the publisher's connection. One such operation
runs at a time per ingress: reads hold the dead letters they have seen
until the end (see :mod:`geobus.dlq`), so two at once would each see only
part of a queue. Each is bounded by ``GEOBUS_ADMIN_TIMEOUT``; a broker that
is away or too slow is answered with ``503``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geobus.errors import ConfigurationError, TransientError
from geobus.ingress.auth import admin_only
from geobus.ingress.documents import jobs_document
from geobus.ingress.ports import JobRecord
from geobus.ingress.problem import problem
from geobus.ingress.resources import InvalidParameterError, int_parameter, resources_of
from geobus.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

JOBS_PAGE = 50
JOBS_PAGE_MAX = 1000
JOB_STATUSES = ("accepted", "running", "successful", "failed", "dismissed")
# The stage names of geobus.broker.topology.STAGES, without importing the broker here.
DEAD_LETTER_STAGES = ("validator", "reprojector", "writer")


@runtime_checkable
class JobListing(Protocol):
    """A job store that can list its jobs (both geobus stores can)."""

    def list_jobs(self, limit: int, offset: int, status: str | None = None) -> list[JobRecord]:
        """Jobs, newest first; only those in ``status`` when given."""


class DeadLetters(Protocol):
    """The dead-letter operations behind the HTTP endpoints; JSON-ready results."""

    async def listing(self, stage: str | None) -> dict[str, Any]:
        """Per stage: ``{"count": n, "groups": [{"reason", "error_class", "count"}]}``."""

    async def show(self, message_id: str, stage: str | None) -> list[dict[str, Any]]:
        """The decoded dead letters with ``message_id`` (usually one; none when unknown)."""

    async def replay(self, message_id: str, stage: str | None) -> dict[str, Any]:
        """``{"replayed": [ids], "failed": [[id, error]]}`` for the dead letters with the id."""


class BrokerDeadLetters:
    """:class:`DeadLetters` on the real broker through :mod:`geobus.dlq`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()

    async def listing(self, stage: str | None) -> dict[str, Any]:
        """See :func:`geobus.dlq.list_dead_letters`."""
        from geobus import dlq

        return await self._bounded(lambda: dlq.list_dead_letters(self._settings, stage))

    async def show(self, message_id: str, stage: str | None) -> list[dict[str, Any]]:
        """See :func:`geobus.dlq.show`."""
        from geobus import dlq

        return await self._bounded(lambda: dlq.show(self._settings, message_id, stage))

    async def replay(self, message_id: str, stage: str | None) -> dict[str, Any]:
        """See :func:`geobus.dlq.replay`."""
        from geobus import dlq

        report = await self._bounded(lambda: dlq.replay(self._settings, message_id, stage))
        return {"replayed": report.replayed, "failed": [list(f) for f in report.failed]}

    async def _bounded(self, work: Callable[[], Awaitable[T]]) -> T:
        from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

        timeout = self._settings.admin_timeout
        try:
            # The wait for the lock counts: the client waits for both.
            async with asyncio.timeout(timeout), self._lock:
                return await work()
        except TimeoutError as exc:
            # A cancelled read returns what it held (its channel closes); a
            # cancelled replay may leave a dead letter that was also
            # republished: at-least-once, the writer stores it once.
            msg = f"the broker did not finish within {timeout:g} s (GEOBUS_ADMIN_TIMEOUT)"
            raise TransientError(msg) from exc
        except (AMQPError, ChannelInvalidStateError, OSError) as exc:
            msg = f"the broker connection failed: {type(exc).__name__}"
            raise TransientError(msg) from exc


def deadletters_of(request: Request) -> DeadLetters:
    """The dead-letter operations the lifespan put into the request's state."""
    access: DeadLetters = request.state.deadletters
    return access


# -- parameters ----------------------------------------------------------------


def choice_parameter(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    """Query parameter ``name``, one of ``allowed``, or None when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        detail = f"{name} must be one of {', '.join(allowed)}"
        raise InvalidParameterError("invalid-parameter", detail, name)
    return raw


def _invalid(request: Request, exc: InvalidParameterError) -> Response:
    return problem(
        422, exc.detail, instance=request.url.path, code=exc.code, parameter=exc.parameter
    )


def _unavailable(request: Request, exc: Exception) -> Response:
    settings = resources_of(request).settings
    password = urlsplit(settings.amqp_url).password
    detail = str(exc)
    if password:
        # Belt and braces: no error text may carry the broker's password.
        detail = detail.replace(password, "***")
    log.warning("admin request %s failed on the broker: %s", request.url.path, detail)
    return problem(
        503,
        f"the dead letters cannot be reached right now, retry later: {detail}",
        instance=request.url.path,
        code="broker-unavailable",
        headers={"Retry-After": str(settings.retry_after)},
    )


# -- endpoints -----------------------------------------------------------------


@admin_only
async def list_jobs(request: Request) -> Response:
    """One page of jobs, newest first, optionally of one status."""
    try:
        limit = int_parameter(request, "limit", JOBS_PAGE, 1, JOBS_PAGE_MAX)
        offset = int_parameter(request, "offset", 0, 0, 2**62)
        status = choice_parameter(request, "status", JOB_STATUSES)
    except InvalidParameterError as exc:
        return _invalid(request, exc)
    store = resources_of(request).store
    if not isinstance(store, JobListing):
        return problem(
            501, "this store cannot list jobs", instance=request.url.path, code="not-supported"
        )
    # One more than asked tells whether a next page exists.
    rows = await asyncio.to_thread(store.list_jobs, limit + 1, offset, status)
    document = jobs_document(
        rows[:limit], limit=limit, offset=offset, more=len(rows) > limit, status=status
    )
    return JSONResponse(document)


DeadLetterHandler = Callable[[Request, DeadLetters, str | None], Awaitable[Response]]


def _dead_letter_endpoint(handler: DeadLetterHandler) -> Callable[[Request], Awaitable[Response]]:
    """Parse ``?stage=`` (422 when unknown) and answer 503 when the broker cannot be reached."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            stage = choice_parameter(request, "stage", DEAD_LETTER_STAGES)
        except InvalidParameterError as exc:
            return _invalid(request, exc)
        try:
            return await handler(request, deadletters_of(request), stage)
        except (TransientError, ConfigurationError) as exc:
            return _unavailable(request, exc)

    return endpoint


@admin_only
@_dead_letter_endpoint
async def list_dead_letters(
    request: Request, deadletters: DeadLetters, stage: str | None
) -> Response:
    """Per stage: how many dead letters, grouped by reason and error class."""
    return JSONResponse(await deadletters.listing(stage))


@admin_only
@_dead_letter_endpoint
async def show_dead_letter(
    request: Request, deadletters: DeadLetters, stage: str | None
) -> Response:
    """One dead letter decoded; a JSON array when the broker holds several with that id."""
    message_id = request.path_params["message_id"]
    found = await deadletters.show(message_id, stage)
    if not found:
        return _unknown(request, message_id)
    # A batch of thousands of features makes a document of megabytes: render it
    # off the event loop too.
    body = await asyncio.to_thread(_render, found[0] if len(found) == 1 else found)
    return Response(body, media_type="application/json")


@admin_only
@_dead_letter_endpoint
async def replay_dead_letter(
    request: Request, deadletters: DeadLetters, stage: str | None
) -> Response:
    """Republish the dead letter(s) with the id to where they came from, confirmed."""
    message_id = request.path_params["message_id"]
    report = await deadletters.replay(message_id, stage)
    if not report["replayed"] and not report["failed"]:
        return _unknown(request, message_id)
    if report["failed"]:
        log.warning("replay of %s failed: %s", message_id, report["failed"])
        return problem(
            502,
            "the broker did not take the replay; what failed is still dead-lettered",
            instance=request.url.path,
            code="replay-failed",
            replayed=report["replayed"],
            failed=report["failed"],
        )
    log.info("replayed dead letter(s) %s", report["replayed"])
    return JSONResponse(report)


def _render(document: Any) -> bytes:
    # As JSONResponse renders: compact, UTF-8, no NaN.
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode()


def _unknown(request: Request, message_id: str) -> Response:
    return problem(
        404,
        f"no dead letter with message id {message_id!r}",
        instance=request.url.path,
        code="unknown-dead-letter",
    )


ROUTES = [
    Route("/v1/jobs", list_jobs, methods=["GET"]),
    Route("/v1/deadletters", list_dead_letters, methods=["GET"]),
    # ":path": a message id may hold a slash (sent percent-encoded).
    Route("/v1/deadletters/{message_id:path}/replay", replay_dead_letter, methods=["POST"]),
    Route("/v1/deadletters/{message_id:path}", show_dead_letter, methods=["GET"]),
]
"""The admin routes, for :func:`geobus.ingress.app.create_app`."""
