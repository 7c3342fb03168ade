"""``POST /v1/features``: verify, admit, spool, record the job, answer 202.

Before a byte of the body is read: the signature headers and their timestamp
(:mod:`geobus.ingress.webhooks`, 401), :class:`~geobus.ingress.admission.Admission`
(draining, broker pressure, body limit from ``Content-Length``, per-client
jobs, spool budget), media type and encoding (415), query parameters (422).

Then the body streams to a spool file in one pass (never the whole body in
memory, never parsed here); each chunk feeds the signature's HMAC, the size
limits (:class:`~geobus.ingress.limits.BodyMeter`: body bytes, and inflated
bytes of a gzip body, 413 as soon as either passes its limit) and the spool
budget. Only then is the signature compared (401 and the spool file deleted
before anything is recorded or published), the file fsynced with its
metadata, the job recorded under the sender's idempotency key and ``202
Accepted`` answered; a retry whose key is already recorded gets ``200 OK``
with the first job instead. The conversion follows in the runner.

Nothing here blocks the event loop: the admission answers from memory, file
operations and the inflating of gzip bodies go to threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from geobus import scheduling, tracing
from geobus.codec.batches import BatchLimits
from geobus.codec.convert import MEDIA_TYPES
from geobus.codec.limits import DocumentLimits
from geobus.geometries import MAX_PRECISION
from geobus.ingress import spool, webhooks
from geobus.ingress.admission import Refusal, Upload
from geobus.ingress.bodyfile import BodyFile
from geobus.ingress.conversion import SOURCE_URI
from geobus.ingress.limits import BodyMeter, BodyRefusedError
from geobus.ingress.ports import JobRecord, JobStore
from geobus.ingress.problem import problem
from geobus.ingress.redaction import redact_url
from geobus.ingress.resources import InvalidParameterError, Resources, resources_of
from geobus.ingress.spool import SpoolMeta
from geobus.jobs import job_document, job_path, rfc3339
from geobus.signing import SignatureError, Verifier

log = logging.getLogger(__name__)

_COLLECTION_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ENCODINGS = {"": "identity", "identity": "identity", "gzip": "gzip", "x-gzip": "gzip"}
DEFAULT_COLLECTION = "features"
_PRECISION_RE = re.compile(r"^[0-9]{1,2}$")


class _SpoolFullError(Exception):
    """The body crossed the spool budget while it was received."""


@dataclass(frozen=True, slots=True)
class _Checks:
    """What every chunk of the body goes through besides the spool file."""

    upload: Upload
    meter: BodyMeter
    verifier: Verifier | None
    idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class _JobParameters:
    collection: str
    source_crs: str | None
    callback_url: str | None
    precision: int | None = None


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


def _usable_url(url: str) -> bool:
    """An absolute http(s) URL with a host, a valid port and no control characters."""
    # urlsplit raises on a broken IPv6 host, .port on a port beyond 65535;
    # a control character (NUL) would be refused by the store and by HTTP.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (evaluated for the ValueError it raises)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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
    if callback_url is not None and not _usable_url(callback_url):
        raise InvalidParameterError(
            "invalid-callback-url",
            # Redacted: it may carry the client's credentials.
            f"callback_url {redact_url(callback_url)!r} must be an absolute http or https URL",
            "callback_url",
        )
    precision = query.get("precision") or None
    if precision is not None and not (
        _PRECISION_RE.fullmatch(precision) and int(precision) <= MAX_PRECISION
    ):
        raise InvalidParameterError(
            "invalid-precision",
            f"precision {precision!r} must be a whole number of decimal digits from 0 to"
            f" {MAX_PRECISION}",
            "precision",
        )
    digits = None if precision is None else int(precision)
    return _JobParameters(collection, source_crs, callback_url, digits)


async def _spool_body(request: Request, path: Path, checks: _Checks) -> tuple[int, BodyFile]:
    """Stream the request body into ``path`` through ``checks``; return its size and file.

    The file is still open and the body not yet fsynced: the caller syncs it
    (:meth:`BodyFile.sync_and_close`) while it writes the metadata, or closes
    it and deletes the file. Raises _SpoolFullError when the body crosses the
    spool budget, BodyRefusedError when it passes a size limit or is not
    valid gzip, TimeoutError when it stalls; the file is deleted first.
    """
    body = BodyFile(path)
    meter = checks.meter
    loop = asyncio.get_running_loop()
    idle = checks.idle_timeout
    # One deadline moved forward on every chunk: a stalled body ends with
    # TimeoutError, at no cost per chunk beyond a heap update.
    deadline = asyncio.timeout(None if idle is None else loop.time() + idle)
    try:
        async with deadline:
            async for chunk in request.stream():
                if idle is not None:
                    deadline.reschedule(loop.time() + idle)
                if not chunk:
                    continue
                # Counted before it is written: a body over the limit never
                # reaches the disk past its limit.
                meter.count(chunk)
                if not checks.upload.grow(meter.body_bytes):
                    raise _SpoolFullError
                await body.write(chunk)
                if checks.verifier is not None:
                    # HMAC-SHA256 of a chunk (at most a socket read) costs
                    # less than a hop to a thread: ~40 µs per 64 KiB per secret.
                    checks.verifier.update(chunk)
                if meter.gzip:
                    # Inflating costs ~1 ms per 64 KiB chunk of GeoJSON and ~130 ms
                    # for a chunk of a gzip bomb (measured): off the loop.
                    await asyncio.to_thread(meter.inflate, chunk)
            meter.finish()
        await body.finish()
    except BaseException:
        await body.abandon()  # no write may still use the file
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise
    return meter.body_bytes, body


async def _discard(body: BodyFile, path: Path) -> None:
    """Close and delete a spooled body that is not acknowledged."""
    body.close()
    await asyncio.to_thread(path.unlink, missing_ok=True)


# The spool files and the job record of a request are written in threads of
# their own: a slow disk or database never holds the threads that
# asyncio.to_thread lends to everything else.
# With the loop in real time (GEOBUS_INGRESS_RT_PRIORITY) they are too: a
# real-time thread's I/O goes first at the disk's scheduler as well
# (mq-deadline's real-time class), and it is never queued behind batch work
# for a CPU. Probe, 3 runs each (337 POSTs): inside the ingress p90 / p99
# 15.8 / 47.1 -> 9.2 / 18.4 ms; the metadata's fsyncs p99 31.9 -> 7.4 ms.
# What is left of the tail is mostly ext4's journal commits for the new
# files (not scheduled by I/O priority).
_PERSISTING = ThreadPoolExecutor(
    max_workers=8, thread_name_prefix="geobus-persist", initializer=scheduling.borrow_realtime
)


def _meta_then_record(
    spool_dir: Path, meta: SpoolMeta, synced: Future[None], store: JobStore, job: JobRecord
) -> JobRecord | None:
    """Write the metadata, wait for the body's fsync, then record the job. Blocking."""
    spool.write_meta(spool_dir, meta)
    synced.result()
    return _record(store, job)


async def _persist(
    body: BodyFile, spool_dir: Path, meta: SpoolMeta, store: JobStore, job: JobRecord
) -> JobRecord | None:
    """Make the job durable: body fsync, metadata, then the store; what :func:`_record` says.

    The body's fsync and the metadata's do not need an order, so they run at
    the same time in two threads; the job is recorded (which acknowledges
    it) only after both, by the second thread as soon as the first is done:
    one hop from the event loop for the whole of it instead of three, each
    of which waited for a scheduler slot on a busy machine. Start-up deletes
    spooled jobs the store does not know (:mod:`geobus.ingress.resume`).
    """
    synced = _PERSISTING.submit(body.sync_and_close)
    # Submitted second: a worker starts ``synced`` before this one can wait
    # for it, so the pool never waits on work it has not started.
    recorded = _PERSISTING.submit(_meta_then_record, spool_dir, meta, synced, store, job)
    try:
        return await asyncio.wrap_future(recorded)
    finally:
        # The caller may delete the files next: no write may still be running.
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(synced)


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


def _unauthorized(exc: SignatureError, instance: str) -> Response:
    # The detail names what is wrong, never a signature or a secret.
    return problem(
        401,
        str(exc),
        instance=instance,
        code=exc.reason.replace("_", "-"),
        headers={"WWW-Authenticate": 'Webhook-Signature realm="geobus"'},
    )


async def post_features(request: Request) -> Response:
    """Verify, admit, spool the document, record the job, answer 202; conversion follows."""
    resources = resources_of(request)
    settings = resources.settings
    admission = resources.admission
    instance = request.url.path
    # The signature's timestamp is judged against the moment the request
    # came in, so that a slow upload of a large body does not expire it.
    arrived = time.time()
    try:
        verifier = webhooks.verifier_for(settings, request.headers, arrived)
    except SignatureError as exc:
        return _unauthorized(exc, instance)
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
    try:
        key = webhooks.idempotency_key(verifier, request.headers, client)
    except webhooks.InvalidKeyError as exc:
        return problem(400, str(exc), instance=instance, code="invalid-idempotency-key")
    meter = BodyMeter(encoding, settings.max_body_bytes, settings.max_document_bytes)
    try:
        meter.check_declared(declared)
    except BodyRefusedError as exc:
        return problem(exc.status, exc.detail, instance=instance, code=exc.code)
    upload = admission.begin(client, declared)
    try:
        checks = _Checks(upload, meter, verifier, resources.settings.body_idle_timeout or None)
        return await _accept(
            request, resources, parameters, media_type, encoding, checks, key, arrived
        )
    finally:
        # Accepted: the job now counts through the runner's pending jobs.
        upload.close()


def _record(store: JobStore, job: JobRecord) -> JobRecord | None:
    """Insert the job; the job that holds its idempotency key when that is another one.

    Blocking: run it in a thread. The ledger's unique key decides between
    concurrent duplicates, whichever replica they reached.
    """
    # Inserted (the common case): one statement, nothing more to ask.
    if store.create_job(job) or job.idempotency_key is None:
        return None
    owner = store.job_for_key(job.idempotency_key)
    if owner is None or owner.job_id == job.job_id:
        return None
    return owner


async def _accept(
    request: Request,
    resources: Resources,
    parameters: _JobParameters,
    media_type: str,
    encoding: str,
    checks: _Checks,
    key: str | None,
    arrived: float,
) -> Response:
    instance = request.url.path
    settings = resources.settings
    job_id = str(uuid.uuid4())
    body = spool.body_path(settings.spool_dir, job_id)
    try:
        size, spooled = await _spool_body(request, body, checks)
    except ClientDisconnect:
        log.info("client disconnected while sending job %s; nothing was spooled", job_id)
        return problem(400, "the request body was not received completely", instance=instance)
    except TimeoutError:
        idle = resources.settings.body_idle_timeout
        log.info("job %s refused: no part of its body arrived for %g s", job_id, idle)
        return problem(
            408,
            f"no part of the request body arrived for {idle:g} s (GEOBUS_BODY_IDLE_TIMEOUT);"
            " nothing was kept",
            instance=instance,
            code="body-timeout",
            headers={"Connection": "close"},
        )
    except _SpoolFullError:
        log.warning("job %s refused: the spool budget ran out while receiving it", job_id)
        return _refused(resources.admission.spool_full(), instance)
    except BodyRefusedError as exc:
        log.info("job %s refused (%s): %s", job_id, exc.code, exc.detail)
        return problem(exc.status, exc.detail, instance=instance, code=exc.code)
    if checks.verifier is not None:
        try:
            checks.verifier.verify(arrived, settings.webhook_tolerance)
        except SignatureError as exc:
            # Nothing of an unauthenticated body is kept, recorded or published.
            await _discard(spooled, body)
            log.warning(
                "POST refused: %s (webhook-id %r)", exc.reason, checks.verifier.headers.message_id
            )
            return _unauthorized(exc, instance)
    if size == 0:
        await _discard(spooled, body)
        return problem(400, "the request body is empty", instance=instance, code="empty-body")

    created = datetime.now(UTC)
    limits = BatchLimits.from_settings(settings)
    try:
        document_bytes = checks.meter.document_bytes
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
            client=checks.upload.client,
            traceparent=tracing.current(),
            precision=parameters.precision,
            document_limits=dataclasses.asdict(DocumentLimits.from_settings(settings)),
        )
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
            idempotency_key=key,
            precision=parameters.precision,
        )
        first = await _persist(spooled, settings.spool_dir, meta, resources.store, job)
    except BaseException:
        # Not acknowledged, so not kept: the client sees an error and resends.
        spooled.close()  # a no-op once synced
        await asyncio.to_thread(spool.remove, settings.spool_dir, job_id)
        raise
    if first is not None:
        # A retry (or a concurrent duplicate that lost): the first job answers.
        await asyncio.to_thread(spool.remove, settings.spool_dir, job_id)
        log.info("duplicate of job %s (idempotency key) answered with it", first.job_id)
        return JSONResponse(
            job_document(first),
            status_code=200,
            headers={"Location": job_path(first.job_id), "Idempotent-Replayed": "true"},
        )
    resources.runner.submit(meta)
    return JSONResponse(job_document(job), status_code=202, headers={"Location": job_path(job_id)})
