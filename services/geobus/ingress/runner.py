"""What happens to a job after its 202, in the background of the ingress.

:class:`PoolRunner` publishes ``job.accepted``, marks the job running,
hands the spooled document to a worker process
(:func:`~geobus.ingress.conversion.convert_and_publish`), records a failed
document in the store and deletes the spool files once the job's batches are
all confirmed. A job whose conversion did not finish (broker away, process
stopped) keeps its spool files, to be resumed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Protocol

from geobus.ingress import conversion, names, spool
from geobus.ingress.ports import JobStore, Publisher
from geobus.ingress.spool import SpoolMeta
from geobus.settings import Settings
from geobus.v1 import feature_pb2, job_pb2

log = logging.getLogger(__name__)

STAGE = "ingress"


class ConversionRunner(Protocol):
    """Takes accepted jobs and carries them out in the background."""

    def submit(self, meta: SpoolMeta) -> None:
        """Start the job; returns at once."""

    async def aclose(self) -> None:
        """Stop taking jobs and release the workers; unfinished jobs stay spooled."""


def process_pool(workers: int = 1) -> ProcessPoolExecutor:
    """A pool of fresh interpreters (never forked from the running event loop)."""
    method = "forkserver" if sys.platform == "linux" else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def accepted_message(meta: SpoolMeta) -> job_pb2.JobAccepted:
    """The ``job.accepted`` event of a spooled job."""
    message = job_pb2.JobAccepted(
        job_id=meta.job_id,
        collection=meta.collection,
        source=feature_pb2.Source(uri=conversion.SOURCE_URI, media_type=meta.media_type),
        source_crs=meta.source_crs or conversion.DEFAULT_CRS,
        document_bytes=meta.document_bytes,
        callback_url=meta.callback_url or "",
    )
    message.accepted_at.FromDatetime(datetime.fromisoformat(meta.created))
    return message


class PoolRunner:
    """Runs conversions in a process pool; one asyncio task per job in this process."""

    def __init__(
        self, settings: Settings, store: JobStore, publisher: Publisher, pool: Executor
    ) -> None:
        self._settings = settings
        self._store = store
        self._publisher = publisher
        self._pool = pool
        self._tasks: set[asyncio.Task[conversion.ConversionResult | None]] = set()

    def warm_up(self) -> None:
        """Start the workers now, so the first job does not wait for interpreters."""
        self._pool.submit(conversion.warm_up)

    def submit(self, meta: SpoolMeta) -> None:
        """Carry out ``meta``'s job in the background."""
        task = asyncio.create_task(self.run(meta), name=f"job {meta.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, meta: SpoolMeta) -> conversion.ConversionResult | None:
        """Carry out one job; None when it has to be resumed later."""
        job_id = meta.job_id
        spool_dir = self._settings.spool_dir
        try:
            await self._announce(meta)
            await asyncio.to_thread(self._store.mark_running, job_id, _now())
            result = await asyncio.get_running_loop().run_in_executor(
                self._pool,
                conversion.convert_and_publish,
                str(spool.body_path(spool_dir, job_id)),
                meta,
                self._settings,
            )
            if result.failed:
                await asyncio.to_thread(
                    self._store.mark_failed,
                    job_id,
                    result.failure_code or "failed",
                    result.failure_message or "",
                    _now(),
                )
            await asyncio.to_thread(spool.remove, spool_dir, job_id)
        except asyncio.CancelledError:
            log.info("job %s interrupted; it stays spooled", job_id)
            raise
        except Exception:
            log.exception("job %s could not be converted; it stays spooled", job_id)
            return None
        log.info(
            "job %s: %d features in %d batches, %d rejected%s",
            job_id,
            result.features,
            result.batches,
            result.rejected,
            f", failed: {result.failure_code}" if result.failed else "",
        )
        return result

    async def _announce(self, meta: SpoolMeta) -> None:
        """Publish ``job.accepted``: an event for outside consumers, no geobus queue needs it."""
        # Not mandatory (see Topology.binds): no geobus queue needs to hear it.
        await self._publisher.publish(
            names.jobs_exchange(self._settings.prefix),
            names.JOB_ACCEPTED,
            accepted_message(meta).SerializeToString(),
            message_id=names.message_id(meta.job_id, names.JOB_ACCEPTED, 0),
            correlation_id=meta.job_id,
            stage=STAGE,
        )

    async def aclose(self) -> None:
        """Cancel running jobs (their spool stays) and stop the workers."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)


def _now() -> datetime:
    return datetime.now(UTC)
