"""The ingress's Starlette application: accept, spool, answer 202, convert later.

``POST /v1/features`` streams the body to a spool file (never the whole body
in memory, never parsed here), fsyncs it with its metadata, records the job
and answers ``202 Accepted``; the conversion runs afterwards in a worker
process (:mod:`geobus.ingress.runner`). The job API reads the store's
ledger. Every error is an RFC 9457 problem document.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geobus.codec.convert import MEDIA_TYPES
from geobus.ingress import spool
from geobus.ingress.conversion import SOURCE_URI
from geobus.ingress.documents import job_document, job_path, rejects_document, rfc3339
from geobus.ingress.ports import JobRecord, JobStore, Publisher, PublisherFactory
from geobus.ingress.problem import EXCEPTION_HANDLERS, problem
from geobus.ingress.runner import ConversionRunner, PoolRunner, process_pool
from geobus.ingress.spool import SpoolMeta
from geobus.settings import Settings

log = logging.getLogger(__name__)

RunnerFactory = Callable[[Settings, JobStore, Publisher], ConversionRunner]

_COLLECTION_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ENCODINGS = {"": "identity", "identity": "identity", "gzip": "gzip", "x-gzip": "gzip"}
DEFAULT_COLLECTION = "features"
REJECTS_PAGE = 100
REJECTS_PAGE_MAX = 1000
READY_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Resources:
    """What the lifespan opened, shared by every request."""

    settings: Settings
    store: JobStore
    publisher: Publisher
    runner: ConversionRunner


class _InvalidParameterError(Exception):
    """A request parameter is unusable: answered with 422."""

    def __init__(self, code: str, detail: str, parameter: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.parameter = parameter


def _resources(request: Request) -> Resources:
    resources: Resources = request.state.resources
    return resources


# -- POST /v1/features ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _JobParameters:
    collection: str
    source_crs: str | None
    callback_url: str | None


@functools.lru_cache(maxsize=256)
def crs_problem(text: str) -> str | None:
    """Why PROJ refuses ``text`` as a CRS, or None (blocking on first use: PROJ's database)."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_user_input(text)
    except CRSError as exc:
        return str(exc)
    return None


async def _job_parameters(request: Request) -> _JobParameters:
    query = request.query_params
    collection = query.get("collection", DEFAULT_COLLECTION)
    if not _COLLECTION_RE.fullmatch(collection):
        raise _InvalidParameterError(
            "invalid-collection",
            f"collection {collection!r} must match ^[a-z_][a-z0-9_]{{0,62}}$",
            "collection",
        )
    source_crs = query.get("source_crs") or None
    if source_crs is not None:
        why = await asyncio.to_thread(crs_problem, source_crs)
        if why is not None:
            raise _InvalidParameterError(
                "invalid-crs", f"source_crs {source_crs!r} is not a known CRS: {why}", "source_crs"
            )
    callback_url = query.get("callback_url") or None
    if callback_url is not None:
        parts = urlsplit(callback_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _InvalidParameterError(
                "invalid-callback-url",
                f"callback_url {callback_url!r} must be an absolute http or https URL",
                "callback_url",
            )
    return _JobParameters(collection, source_crs, callback_url)


def _close_synced(handle: BinaryIO) -> None:
    """Flush, fsync and close the spool file (blocking: run in a thread)."""
    try:
        handle.flush()
        spool.fsync_file_handle(handle)
    finally:
        handle.close()


async def _spool_body(request: Request, path: Path) -> int:
    """Stream the request body into ``path``; return its size. Fsynced on return."""
    handle: BinaryIO = await asyncio.to_thread(path.open, "xb")
    size = 0
    try:
        async for chunk in request.stream():
            # A chunk is at most a socket read (64 KiB): copying it into the
            # page cache takes microseconds, less than a hop to a thread.
            handle.write(chunk)
            size += len(chunk)
    except BaseException:
        handle.close()
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    await asyncio.to_thread(_close_synced, handle)
    return size


async def post_features(request: Request) -> Response:
    """Spool the document, record the job, answer 202; conversion follows in the background."""
    resources = _resources(request)
    instance = request.url.path
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in MEDIA_TYPES:
        return problem(
            415,
            f"Content-Type {media_type or '(none)'!r} is not accepted; send one of "
            + ", ".join(MEDIA_TYPES),
            instance=instance,
            code="unsupported-media-type",
            headers={"Accept-Post": ", ".join(MEDIA_TYPES)},
        )
    raw_encoding = request.headers.get("content-encoding", "").strip().lower()
    encoding = _ENCODINGS.get(raw_encoding)
    if encoding is None:
        return problem(
            415,
            f"Content-Encoding {raw_encoding!r} is not supported; send gzip or identity",
            instance=instance,
            code="unsupported-content-encoding",
            headers={"Accept-Encoding": "gzip, identity"},
        )
    try:
        parameters = await _job_parameters(request)
    except _InvalidParameterError as exc:
        return problem(422, exc.detail, instance=instance, code=exc.code, parameter=exc.parameter)

    settings = resources.settings
    job_id = str(uuid.uuid4())
    body = spool.body_path(settings.spool_dir, job_id)
    try:
        size = await _spool_body(request, body)
    except ClientDisconnect:
        log.info("client disconnected while sending job %s; nothing was spooled", job_id)
        return problem(400, "the request body was not received completely", instance=instance)
    if size == 0:
        await asyncio.to_thread(body.unlink, missing_ok=True)
        return problem(400, "the request body is empty", instance=instance, code="empty-body")

    created = datetime.now(UTC)
    try:
        document_bytes = (
            size if encoding == "identity" else await asyncio.to_thread(spool.gzip_size, body)
        )
        meta = SpoolMeta(
            job_id=job_id,
            collection=parameters.collection,
            media_type=media_type,
            content_encoding=encoding,
            source_crs=parameters.source_crs,
            callback_url=parameters.callback_url,
            created=rfc3339(created) or "",
            body_bytes=size,
            document_bytes=document_bytes,
        )
        await asyncio.to_thread(spool.write_meta, settings.spool_dir, meta)
        job = JobRecord(
            job_id=job_id,
            status="accepted",
            collection=parameters.collection,
            created=created,
            updated=created,
            source_uri=SOURCE_URI,
            media_type=media_type,
            document_bytes=document_bytes,
            callback_url=parameters.callback_url,
        )
        await asyncio.to_thread(resources.store.create_job, job)
    except BaseException:
        # Not acknowledged, so not kept: the client sees an error and resends.
        await asyncio.to_thread(spool.remove, settings.spool_dir, job_id)
        raise
    resources.runner.submit(meta)
    return JSONResponse(job_document(job), status_code=202, headers={"Location": job_path(job_id)})


# -- job API -------------------------------------------------------------------


async def get_job(request: Request) -> Response:
    """The job's status document."""
    job_id = request.path_params["job_id"]
    job = await asyncio.to_thread(_resources(request).store.get_job, job_id)
    if job is None:
        return problem(404, f"no job {job_id!r}", instance=request.url.path, code="unknown-job")
    return JSONResponse(job_document(job))


def _int_parameter(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        detail = f"{name} must be an integer {low}-{high}"
        raise _InvalidParameterError("invalid-parameter", detail, name)
    return value


async def get_rejects(request: Request) -> Response:
    """One page of the job's rejected features."""
    store = _resources(request).store
    job_id = request.path_params["job_id"]
    try:
        limit = _int_parameter(request, "limit", REJECTS_PAGE, 1, REJECTS_PAGE_MAX)
        offset = _int_parameter(request, "offset", 0, 0, 2**62)
    except _InvalidParameterError as exc:
        return problem(
            422, exc.detail, instance=request.url.path, code=exc.code, parameter=exc.parameter
        )
    job = await asyncio.to_thread(store.get_job, job_id)
    if job is None:
        return problem(404, f"no job {job_id!r}", instance=request.url.path, code="unknown-job")
    # One more than asked tells whether a next page exists.
    rows = await asyncio.to_thread(store.list_rejections, job_id, limit + 1, offset)
    document = rejects_document(
        job_id, rows[:limit], limit=limit, offset=offset, more=len(rows) > limit
    )
    return JSONResponse(document)


# -- probes --------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """Alive: answers as long as the process serves HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready: the broker connection is open and the store answers."""
    resources = _resources(request)
    if not resources.publisher.is_open:
        return problem(
            503, "the broker connection is closed", instance=request.url.path, code="not-ready"
        )
    try:
        await asyncio.wait_for(asyncio.to_thread(resources.store.ping), READY_TIMEOUT)
    except Exception as exc:  # any failure of the store means not ready
        return problem(
            503, f"the store does not answer: {exc!r}", instance=request.url.path, code="not-ready"
        )
    return JSONResponse({"status": "ready"})


# -- application ---------------------------------------------------------------


def pool_runner(settings: Settings, store: JobStore, publisher: Publisher) -> ConversionRunner:
    """The default runner: one worker process converting one job at a time."""
    runner = PoolRunner(settings, store, publisher, process_pool(1))
    runner.warm_up()
    return runner


async def _default_publisher(settings: Settings) -> Publisher:
    from geobus.ingress.wiring import connect_publisher

    return await connect_publisher(settings)


def create_app(
    settings: Settings,
    *,
    store: JobStore | None = None,
    publisher: Publisher | None = None,
    publisher_factory: PublisherFactory | None = None,
    runner_factory: RunnerFactory = pool_runner,
) -> Starlette:
    """The ingress application. Nothing is opened until its lifespan starts.

    A ``store`` or ``publisher`` passed in belongs to the caller; those the
    lifespan opens itself (from ``settings``, or ``publisher_factory``) it
    also closes.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            await asyncio.to_thread(settings.spool_dir.mkdir, parents=True, exist_ok=True)
            job_store = store
            if job_store is None:
                from geobus.ingress.wiring import open_job_store

                opened = await asyncio.to_thread(open_job_store, settings)
                stack.push_async_callback(asyncio.to_thread, opened.close)
                job_store = opened
            broker = publisher
            if broker is None:
                factory = publisher_factory or functools.partial(_default_publisher, settings)
                broker = await factory()
                stack.push_async_callback(broker.close)
            runner = runner_factory(settings, job_store, broker)
            stack.push_async_callback(runner.aclose)
            yield {"resources": Resources(settings, job_store, broker, runner)}

    routes = [
        Route("/v1/features", post_features, methods=["POST"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/rejects", get_rejects, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
