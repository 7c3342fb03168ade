"""``POST /v1/features``: admit, spool, record the job, answer 202.

The request is first checked against :class:`~geobus.ingress.admission.Admission`
(draining, broker pressure, per-client jobs, spool budget) before a byte of the
body is read; then the body is streamed to a spool file (never the whole body
in memory, never parsed here), the spool budget is checked again per chunk, the
file is fsynced with its metadata, the job recorded and ``202 Accepted``
answered. The conversion follows in the runner. Nothing here blocks the event
loop: the admission answers from memory, file operations go to threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from geobus.codec.batches import BatchLimits
from geobus.codec.convert import MEDIA_TYPES
from geobus.ingress import spool
from geobus.ingress.admission import Refusal, Upload
from geobus.ingress.conversion import SOURCE_URI
from geobus.ingress.documents import job_document, job_path, rfc3339
from geobus.ingress.ports import JobRecord
from geobus.ingress.problem import problem
from geobus.ingress.resources import InvalidParameterError, Resources, resources_of
from geobus.ingress.spool import SpoolMeta

log = logging.getLogger(__name__)

_COLLECTION_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ENCODINGS = {"": "identity", "identity": "identity", "gzip": "gzip", "x-gzip": "gzip"}
DEFAULT_COLLECTION = "features"


class _SpoolFullError(Exception):
    """The body crossed the spool budget while it was received."""


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
        raise InvalidParameterError(
            "invalid-collection",
            f"collection {collection!r} must match ^[a-z_][a-z0-9_]{{0,62}}$",
            "collection",
        )
    source_crs = query.get("source_crs") or None
    if source_crs is not None:
        why = await asyncio.to_thread(crs_problem, source_crs)
        if why is not None:
            raise InvalidParameterError(
                "invalid-crs", f"source_crs {source_crs!r} is not a known CRS: {why}", "source_crs"
            )
    callback_url = query.get("callback_url") or None
    if callback_url is not None:
        parts = urlsplit(callback_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidParameterError(
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


async def _spool_body(request: Request, path: Path, upload: Upload) -> int:
    """Stream the request body into ``path``; return its size. Fsynced on return.

    Raises _SpoolFullError (the file deleted) when the body crosses the
    spool budget.
    """
    handle: BinaryIO = await asyncio.to_thread(path.open, "xb")
    size = 0
    try:
        async for chunk in request.stream():
            # A chunk is at most a socket read (64 KiB): copying it into the
            # page cache takes microseconds, less than a hop to a thread.
            handle.write(chunk)
            size += len(chunk)
            if not upload.grow(size):
                raise _SpoolFullError
    except BaseException:
        handle.close()
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    await asyncio.to_thread(_close_synced, handle)
    return size


def _declared_length(request: Request) -> int | None:
    """The Content-Length, or None (chunked, or not a number: the server rejects those)."""
    raw = request.headers.get("content-length")
    if raw is None or not raw.isdigit():
        return None
    return int(raw)


def _refused(refusal: Refusal, instance: str) -> Response:
    headers = {} if refusal.retry_after is None else {"Retry-After": str(refusal.retry_after)}
    return problem(
        refusal.status, refusal.detail, instance=instance, code=refusal.code, headers=headers
    )


async def post_features(request: Request) -> Response:
    """Admit, spool the document, record the job, answer 202; conversion follows."""
    resources = resources_of(request)
    admission = resources.admission
    instance = request.url.path
    client = admission.client_of(request.client.host if request.client else None, request.headers)
    declared = _declared_length(request)
    refusal = admission.refusal(client, declared)
    if refusal is not None:
        return _refused(refusal, instance)
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
    except InvalidParameterError as exc:
        return problem(422, exc.detail, instance=instance, code=exc.code, parameter=exc.parameter)
    upload = admission.begin(client, declared)
    try:
        return await _accept(request, resources, parameters, media_type, encoding, upload)
    finally:
        # Accepted: the job now counts through the runner's pending jobs.
        upload.close()


async def _accept(
    request: Request,
    resources: Resources,
    parameters: _JobParameters,
    media_type: str,
    encoding: str,
    upload: Upload,
) -> Response:
    instance = request.url.path
    settings = resources.settings
    job_id = str(uuid.uuid4())
    body = spool.body_path(settings.spool_dir, job_id)
    try:
        size = await _spool_body(request, body, upload)
    except ClientDisconnect:
        log.info("client disconnected while sending job %s; nothing was spooled", job_id)
        return problem(400, "the request body was not received completely", instance=instance)
    except _SpoolFullError:
        log.warning("job %s refused: the spool budget ran out while receiving it", job_id)
        return _refused(resources.admission.spool_full(), instance)
    if size == 0:
        await asyncio.to_thread(body.unlink, missing_ok=True)
        return problem(400, "the request body is empty", instance=instance, code="empty-body")

    created = datetime.now(UTC)
    limits = BatchLimits.from_settings(settings)
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
            batch_max_features=limits.max_features,
            batch_max_bytes=limits.max_bytes,
            max_message_bytes=limits.max_message_bytes,
            client=upload.client,
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
