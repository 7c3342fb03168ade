"""Convert a spooled document and publish its batches: runs in a worker process.

:func:`convert_and_publish` is what the ingress submits to its process pool:
module-level, with picklable arguments, so that the CPU-heavy conversion never
shares the GIL with the event loop that answers HTTP. Inside the worker it
runs its own asyncio loop and its own broker connection.

The conversion itself (:class:`~geobus.codec.convert.DocumentConverter`) is
pulled batch by batch in a thread of the worker, so that publishing and the
broker's confirms overlap with converting the next batch; at most
``window`` publishes are unconfirmed at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import logging
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from geobus import logs, tracing
from geobus.broker import routing, wire
from geobus.broker.topology import features_exchange, jobs_exchange
from geobus.codec.batches import STAGE, BatchContext, BatchLimits, Output, Totals
from geobus.codec.convert import MEDIA_TYPES, DocumentConverter
from geobus.codec.limits import DEFAULT_LIMITS, DocumentLimits
from geobus.errors import DocumentError
from geobus.ingress.ports import Publisher
from geobus.ingress.spool import SpoolMeta
from geobus.settings import Settings
from geobus.v1 import feature_pb2, job_pb2

log = logging.getLogger(__name__)

SOURCE_URI = "urn:geobus:http"
DEFAULT_CRS = "OGC:CRS84"
PUBLISH_WINDOW = 8
# Errors the gzip reader raises on a body that is not (complete) gzip.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


@dataclass(frozen=True, slots=True)
class ConversionResult:
    """What the worker reports back: the totals, and the failure if the document was unusable."""

    job_id: str
    features: int
    batches: int
    rejected: int
    failure_code: str | None = None
    failure_message: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the document as a whole could not be converted."""
        return self.failure_code is not None


def open_body(path: Path, content_encoding: str) -> BinaryIO:
    """The spooled body as the document's bytes (gunzipped when it was sent gzip)."""
    if content_encoding == "gzip":
        # GzipFile is a BufferedIOBase, which typeshed does not count as a BinaryIO.
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def context_for(meta: SpoolMeta) -> BatchContext:
    """The batch context of a spooled job."""
    return BatchContext(
        job_id=meta.job_id,
        collection=meta.collection,
        crs=meta.source_crs or DEFAULT_CRS,
        source=feature_pb2.Source(uri=SOURCE_URI, media_type=meta.media_type),
        precision=meta.precision,
    )


def limits_for(meta: SpoolMeta, settings: Settings) -> BatchLimits:
    """The batch limits the job was accepted with (the settings' for older metadata).

    A resumed job must be cut into the very batches of its first run: the
    writer deduplicates on (job, sequence), so a batch cut differently after a
    restart with other settings would lose or double features.
    """
    configured = BatchLimits.from_settings(settings)
    return BatchLimits(
        max_features=meta.batch_max_features or configured.max_features,
        max_bytes=meta.batch_max_bytes or configured.max_bytes,
        max_message_bytes=meta.max_message_bytes or configured.max_message_bytes,
    )


def document_limits_for(meta: SpoolMeta, settings: Settings) -> DocumentLimits:
    """The document limits the job was accepted with (the settings' for older metadata).

    Like the batch limits, they decide which features are rejected and so how
    batches are cut: a resumed job keeps the ones of its first run.
    """
    configured = DocumentLimits.from_settings(settings)
    if not meta.document_limits:
        return configured
    values = dataclasses.asdict(configured)
    # Names this version does not know (metadata of a newer geobus) are ignored.
    values.update({k: v for k, v in meta.document_limits.items() if k in values})
    return DocumentLimits(**values)


def _now() -> datetime:
    return datetime.now(UTC)


class _Window:
    """Publishes concurrently, with at most ``size`` unconfirmed at a time."""

    def __init__(self, publisher: Publisher, size: int) -> None:
        self._publisher = publisher
        self._slots = asyncio.Semaphore(size)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    async def publish(
        self, exchange: str, routing_key: str, payload: bytes, message_id: str, job_id: str
    ) -> None:
        await self._slots.acquire()
        self._raise_if_failed()
        task = asyncio.create_task(
            self._publisher.publish(
                exchange,
                routing_key,
                payload,
                message_id=message_id,
                correlation_id=job_id,
                stage=STAGE,
            )
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    async def drain(self) -> None:
        """Wait until every publish is confirmed; raise the first failure."""
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        self._raise_if_failed()

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _next(outputs: Iterator[Output]) -> Output | None:
    """One step of the converter, translating gzip failures into a DocumentError."""
    try:
        return next(outputs, None)
    except _GZIP_ERRORS as exc:
        raise DocumentError(
            "document_not_gzip", f"the body is not valid gzip (Content-Encoding: gzip): {exc}"
        ) from None


async def publish_document(
    stream: BinaryIO,
    meta: SpoolMeta,
    limits: BatchLimits,
    publisher: Publisher,
    prefix: str,
    *,
    window: int = PUBLISH_WINDOW,
    document: DocumentLimits = DEFAULT_LIMITS,
) -> ConversionResult:
    """Convert ``stream`` and publish every batch, then ``job.sealed`` (or ``job.failed``).

    Returns once the broker confirmed everything published. A DocumentError
    ends in ``job.failed`` and a result with the failure; any other error
    (broker away) propagates, leaving the job to be resumed from its spool.
    """
    converter = DocumentConverter(
        stream, context_for(meta), limits, framing=MEDIA_TYPES[meta.media_type], document=document
    )
    features, jobs = features_exchange(prefix), jobs_exchange(prefix)
    job_id = meta.job_id
    pending = _Window(publisher, window)
    outputs = iter(converter)
    try:
        while (out := await asyncio.to_thread(_next, outputs)) is not None:
            if out.batch is not None:
                key = routing.FEATURE_INGESTED
                await pending.publish(
                    features,
                    key,
                    out.batch.SerializeToString(),
                    wire.message_id(job_id, key, out.sequence),
                    job_id,
                )
            if out.rejections is not None:
                key = routing.FEATURE_REJECTED
                await pending.publish(
                    features,
                    key,
                    out.rejections.SerializeToString(),
                    wire.message_id(job_id, key, out.sequence),
                    job_id,
                )
    except DocumentError as exc:
        await pending.drain()
        totals = converter.totals
        failed = job_pb2.JobFailed(
            job_id=job_id,
            code=exc.code,
            message=exc.message,
            counts=job_pb2.JobCounts(received=totals.features, rejected=totals.rejected),
        )
        failed.failed_at.FromDatetime(_now())
        await publisher.publish(
            jobs,
            routing.JOB_FAILED,
            failed.SerializeToString(),
            message_id=wire.message_id(job_id, routing.JOB_FAILED, 0),
            correlation_id=job_id,
            stage=STAGE,
        )
        return _result(job_id, totals, exc.code, exc.message)
    except BaseException:
        pending.cancel()
        raise
    await pending.drain()
    totals = converter.totals
    sealed = job_pb2.JobSealed(
        job_id=job_id,
        features_total=totals.features,
        batches_total=totals.batches,
        warnings=converter.warnings,
        rejected_total=totals.rejected,
    )
    sealed.sealed_at.FromDatetime(_now())
    await publisher.publish(
        jobs,
        routing.JOB_SEALED,
        sealed.SerializeToString(),
        message_id=wire.message_id(job_id, routing.JOB_SEALED, 0),
        correlation_id=job_id,
        stage=STAGE,
    )
    return _result(job_id, totals)


def _result(
    job_id: str, totals: Totals, code: str | None = None, message: str | None = None
) -> ConversionResult:
    return ConversionResult(
        job_id=job_id,
        features=totals.features,
        batches=totals.batches,
        rejected=totals.rejected,
        failure_code=code,
        failure_message=message,
    )


async def _convert(spool_path: Path, meta: SpoolMeta, settings: Settings) -> ConversionResult:
    from geobus.ingress.wiring import connect_publisher

    publisher = await connect_publisher(settings, declare_topology=False)
    try:
        with ExitStack() as files:
            stream = files.enter_context(open_body(spool_path, meta.content_encoding))
            return await publish_document(
                stream,
                meta,
                limits_for(meta, settings),
                publisher,
                settings.prefix,
                document=document_limits_for(meta, settings),
            )
    finally:
        await publisher.close()


def convert_and_publish(spool_path: str, meta: SpoolMeta, settings: Settings) -> ConversionResult:
    """Worker-process entry: convert the spooled body of ``meta.job_id`` and publish it."""
    # A fresh interpreter: log like the ingress; every message carries the job's trace.
    logs.configure(settings.log_level, settings.log_format)
    with logs.bind(job_id=meta.job_id, stage=STAGE), tracing.use(meta.traceparent):
        return asyncio.run(_convert(Path(spool_path), meta, settings))


def warm_up() -> None:
    """Import what a conversion needs, so that the first job does not pay for it."""
    import aio_pika  # noqa: F401
    import shapely  # noqa: F401
