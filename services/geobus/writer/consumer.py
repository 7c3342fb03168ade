"""The writer service: one queue carrying every message that ends in the store.

- ``feature.reprojected`` (FeatureBatch): committed in one transaction, then
  republished as ``feature.stored`` for consumers outside geobus;
- ``feature.rejected`` (RejectionBatch): recorded per job;
- ``job.sealed`` (JobSealed): the job's totals.

After each, the job is completed when stored + rejected reached the sealed
total: ``job.completed`` is published and the callback, if any, is sent. The
store makes every write idempotent, so a redelivered message changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from geobus import logs, metrics
from geobus.broker import routing
from geobus.broker.publisher import Publisher
from geobus.broker.topology import Topology
from geobus.broker.wire import message_id
from geobus.errors import MessageError
from geobus.jobs import job_document
from geobus.runtime import Handler, publish_result, run_stage
from geobus.settings import Settings
from geobus.signing import parse_secret
from geobus.store import open_store
from geobus.store.base import FeatureStore, JobRecord
from geobus.v1 import feature_pb2, job_pb2, rejection_pb2
from geobus.writer.callbacks import CallbackSender
from geobus.writer.refusals import write_isolating

STAGE = "writer"
log = logging.getLogger(__name__)

_STATUS = {
    "successful": job_pb2.JOB_STATUS_SUCCESSFUL,
    "failed": job_pb2.JOB_STATUS_FAILED,
}


def record_rejections(batch: rejection_pb2.RejectionBatch) -> None:
    """Count and log the rejections just recorded: every stage's pass through here once.

    One log line per rejected feature, with the stage that rejected it, the
    reason code, the message and the offending coordinate when one is known.
    """
    metrics.count_rejections(metrics.REJECTIONS_RECORDED, None, batch)
    for rejection in batch.rejections:
        location = rejection.location
        log.warning(
            "feature %d of job %s rejected by the %s: %s",
            rejection.feature_index,
            rejection.job_id,
            rejection.stage,
            rejection.message,
            extra={
                "stage": rejection.stage,
                "batch": batch.sequence,
                "feature_index": rejection.feature_index,
                "reason": metrics.reason_name(rejection.reason),
                "coordinate": list(location.coordinate) or None,
                "json_pointer": location.json_pointer or None,
            },
        )


class Writer:
    """Dispatches the writer queue's messages to the store and completes jobs."""

    def __init__(
        self,
        store: FeatureStore,
        publisher: Publisher,
        topology: Topology,
        callbacks: CallbackSender,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.topology = topology
        self.callbacks = callbacks
        self._callbacks: set[asyncio.Task[bool]] = set()

    async def handle(self, payload: Message, message: AbstractIncomingMessage) -> None:
        """Store one message's content; ack follows when this returns."""
        if isinstance(payload, feature_pb2.FeatureBatch):
            # What the database refuses is rejected feature by feature
            # (stage "writer"), published with the stored ones before the ack.
            started = metrics.now()
            with logs.bind(batch=payload.sequence):
                result = await write_isolating(self.store, payload, STAGE)
            seconds = metrics.now() - started
            if result.batch is payload:
                # Stored whole: feature.stored carries the bytes received, not
                # the batch encoded again.
                result.encoded = message.body
            metrics.WRITER_COMMIT_SECONDS.observe(seconds)
            # The writer stores geometry as it comes: it never repairs.
            metrics.observe_batch(STAGE, payload, result.batch, result.rejections, seconds, fixed=0)
            await publish_result(
                self.publisher,
                self.topology,
                result,
                stage=STAGE,
                output_key=routing.FEATURE_STORED,
            )
            job_id = payload.job_id
        elif isinstance(payload, rejection_pb2.RejectionBatch):
            await asyncio.to_thread(self.store.write_rejections, payload)
            record_rejections(payload)
            job_id = payload.job_id
        elif isinstance(payload, job_pb2.JobSealed):
            await asyncio.to_thread(
                self.store.seal_job,
                payload.job_id,
                payload.features_total,
                payload.batches_total,
                payload.sealed_at.ToDatetime(tzinfo=UTC)
                if payload.HasField("sealed_at")
                else datetime.now(UTC),
                list(payload.warnings),
            )
            job_id = payload.job_id
        else:
            msg = f"the writer does not take {payload.DESCRIPTOR.full_name}"
            raise MessageError(msg)
        await self._complete_if_done(job_id)

    async def _complete_if_done(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.complete_if_done, job_id, datetime.now(UTC))
        if job is None:
            return
        counts = job.counts
        finished = Timestamp()
        finished.FromDatetime(job.finished or datetime.now(UTC))
        event = job_pb2.JobCompleted(
            job_id=job.job_id,
            status=_STATUS.get(job.status, job_pb2.JOB_STATUS_UNSPECIFIED),
            counts=job_pb2.JobCounts(
                received=counts.received,
                valid=counts.valid,
                repaired=counts.repaired,
                rejected=counts.rejected,
                stored=counts.stored,
                adjusted=counts.adjusted,
            ),
            completed_at=finished,
        )
        await self.publisher.publish(
            self.topology.jobs_exchange,
            routing.JOB_COMPLETED,
            event,
            message_id=message_id(job.job_id, routing.JOB_COMPLETED, 0),
            correlation_id=job.job_id,
            stage=STAGE,
        )
        if job.created is not None and job.finished is not None:
            seconds = (job.finished - job.created).total_seconds()
            metrics.JOB_DURATION.labels(job.status).observe(max(seconds, 0.0))
        log.info(
            "job %s %s: %d stored, %d rejected",
            job.job_id,
            job.status,
            counts.stored,
            counts.rejected,
        )
        if job.callback_url:
            self._send_callback(job)

    def _send_callback(self, job: JobRecord) -> None:
        assert job.callback_url is not None
        task = asyncio.create_task(self.callbacks.deliver(job.callback_url, job_document(job)))
        # Keep a reference until done: the loop only holds weak ones.
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    async def drain_callbacks(self) -> None:
        """Wait for callbacks still being delivered (at shutdown)."""
        if self._callbacks:
            await asyncio.gather(*self._callbacks, return_exceptions=True)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Consume the writer queue until stopped."""
    store = open_store(settings)
    await asyncio.to_thread(store.ensure_schema)
    sender = CallbackSender(
        key=parse_secret(settings.callback_secret) if settings.callback_secret else None,
        allow=settings.callback_allow,
    )
    writers: list[Writer] = []

    def make_handler(publisher: Publisher, topology: Topology) -> Handler:
        writer = Writer(store, publisher, topology, sender)
        writers.append(writer)
        return writer.handle

    try:
        await run_stage(settings, STAGE, make_handler, stop)
        for writer in writers:
            await writer.drain_callbacks()
    finally:
        await sender.close()
        store.close()
