"""What happens to a job after its 202, in the background of the ingress.

:class:`PoolRunner` publishes ``job.accepted``, marks the job running,
hands the spooled document to a worker process
(:func:`~geobus.ingress.conversion.convert_and_publish`), records a failed
document in the store and deletes the spool files once the job's batches are
all confirmed.

A job that cannot be finished now keeps its spool files. A transient failure
(broker away, publishes not confirmed under a resource alarm) is retried with
back-off for as long as the ingress runs; a crash of the conversion itself
(a worker process that died) is retried a few times, then the job fails.
At shutdown, conversions in flight get ``GEOBUS_SHUTDOWN_TIMEOUT`` to finish;
those still running are stopped and resumed from the spool at the next start.
Re-running a conversion is safe: batches are cut identically (the limits are
in the spool metadata), message ids are deterministic and the store is
idempotent per (job, kind, sequence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from typing import Protocol

from geobus import logs, metrics, tracing
from geobus.broker import routing, wire
from geobus.broker.topology import jobs_exchange
from geobus.errors import TransientError
from geobus.ingress import conversion, spool
from geobus.ingress.ports import JobStore, Publisher
from geobus.ingress.spool import SpoolMeta
from geobus.settings import Settings
from geobus.v1 import feature_pb2, job_pb2
from geobus.workerpool import lower_priority

log = logging.getLogger(__name__)

STAGE = "ingress"
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
CRASH_ATTEMPTS = 3
"""Conversions of one job that may crash (not fail transiently) before the job fails."""
WATCHDOG_INTERVAL = 0.5

PoolFactory = Callable[[], Executor]


class ConversionRunner(Protocol):
    """Takes accepted jobs and carries them out in the background."""

    def submit(self, meta: SpoolMeta) -> None:
        """Start the job; returns at once."""

    def pending(self) -> Collection[SpoolMeta]:
        """Jobs submitted and not finished: their spool files are still on disk."""

    async def aclose(self) -> None:
        """Stop taking jobs, let those in flight finish for a while; the rest stay spooled."""


def _worker_init(ingress_pid: int, niceness: int = 0) -> None:
    """Set up a conversion worker: the ingress alone decides when it stops.

    It runs ``niceness`` (GEOBUS_BATCH_NICENESS) steps below the ingress's
    CPU priority, like the stage services, so that the event loop wins the
    CPU on a saturated machine. Alone at nice 10 (the stages at 0) it lost
    end-to-end time (points-100k vs ogr2ogr 1.44x -> 1.51x): the same step
    for every batch process keeps their shares of the CPU as they were
    (default 15, against 0 and 5: event-loop lag p99 during a 200 MB job
    17-18 -> 9.9 ms, small-POST p99 inside the ingress 89-204 -> 48 ms,
    points-100k end to end unchanged).

    A SIGTERM or Ctrl-C sent to the whole process group must not kill a
    conversion half-way (the ingress waits for it, or stops it itself), and
    a worker must not outlive a killed ingress: it would go on publishing a
    job that the next ingress resumes. (The forkserver, the worker's parent,
    does not reliably exit with the ingress, so PR_SET_PDEATHSIG on the
    parent is no help; the worker watches the ingress itself.)
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lower_priority(niceness)
    watchdog = threading.Thread(
        target=_die_with, args=(ingress_pid,), name="ingress watchdog", daemon=True
    )
    watchdog.start()


def _die_with(ingress_pid: int) -> None:
    """Wait until the ingress process is gone, then end this worker and its forkserver."""
    try:
        # A pidfd becomes readable when the process exits (Linux 5.3+).
        fd = os.pidfd_open(ingress_pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while _alive(ingress_pid):
            time.sleep(WATCHDOG_INTERVAL)
    parent = os.getppid()
    if parent not in (1, ingress_pid):
        # The forkserver that forked this worker serves nobody any more.
        with contextlib.suppress(OSError):
            os.kill(parent, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_pool(workers: int = 1, niceness: int = 0) -> ProcessPoolExecutor:
    """A pool of fresh interpreters (never forked from the running event loop)."""
    method = "forkserver" if sys.platform == "linux" else "spawn"
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_worker_init,
        initargs=(os.getpid(), niceness),
    )


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
        self,
        settings: Settings,
        store: JobStore,
        publisher: Publisher,
        pool_factory: PoolFactory = process_pool,
        *,
        retry_first: float = RETRY_FIRST,
    ) -> None:
        self._settings = settings
        self._store = store
        self._publisher = publisher
        self._pool_factory = pool_factory
        self._pool = pool_factory()
        self._retry_first = retry_first
        self._jobs: dict[asyncio.Task[conversion.ConversionResult | None], SpoolMeta] = {}
        self._futures: dict[str, Future[conversion.ConversionResult]] = {}
        self._stopping = asyncio.Event()

    def warm_up(self) -> None:
        """Start the workers now, so the first job does not wait for interpreters."""
        self._pool.submit(conversion.warm_up)

    def submit(self, meta: SpoolMeta) -> None:
        """Carry out ``meta``'s job in the background."""
        task = asyncio.create_task(self.run(meta), name=f"job {meta.job_id}")
        self._jobs[task] = meta
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[conversion.ConversionResult | None]) -> None:
        self._jobs.pop(task, None)

    def pending(self) -> Collection[SpoolMeta]:
        """Jobs submitted and not finished (their spool files are still on disk)."""
        return list(self._jobs.values())

    async def run(self, meta: SpoolMeta) -> conversion.ConversionResult | None:
        """Carry out one job, retrying until it is done; None when it stays spooled."""
        # This task's log lines and messages carry the job's id and trace.
        logs.bind_task(job_id=meta.job_id, stage=STAGE)
        tracing.use_task(meta.traceparent)
        delay = self._retry_first
        crashes = 0
        while True:
            try:
                return await self._attempt(meta)
            except asyncio.CancelledError:
                log.info("job %s interrupted; it stays spooled", meta.job_id)
                raise
            except TransientError as exc:
                log.warning("job %s: %s; retrying in %.0f s", meta.job_id, exc, delay)
            except Exception as exc:
                crashes += 1
                self._replace_broken_pool(exc)
                if crashes >= CRASH_ATTEMPTS:
                    await self._give_up(meta, exc)
                    return None
                log.exception("job %s: conversion crashed; retrying in %.0f s", meta.job_id, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                log.info("job %s stays spooled and resumes at the next start", meta.job_id)
                return None
            delay = min(delay * 2, RETRY_MAX)

    async def _attempt(self, meta: SpoolMeta) -> conversion.ConversionResult:
        job_id = meta.job_id
        spool_dir = self._settings.spool_dir
        await self._announce(meta)
        await asyncio.to_thread(self._store.mark_running, job_id, _now())
        future = self._pool.submit(
            conversion.convert_and_publish,
            str(spool.body_path(spool_dir, job_id)),
            meta,
            self._settings,
        )
        self._futures[job_id] = future
        started = metrics.now()
        try:
            result = await asyncio.wrap_future(future)
        finally:
            del self._futures[job_id]
        metrics.observe_conversion(result.features, result.rejected, result.failed, started)
        if result.failed:
            await asyncio.to_thread(
                self._store.mark_failed,
                job_id,
                result.failure_code or "failed",
                result.failure_message or "",
                _now(),
            )
        await asyncio.to_thread(spool.remove, spool_dir, job_id)
        log.info(
            "job %s: %d features in %d batches, %d rejected%s",
            job_id,
            result.features,
            result.batches,
            result.rejected,
            f", failed: {result.failure_code}" if result.failed else "",
        )
        return result

    def _converting(self, task: asyncio.Task[conversion.ConversionResult | None]) -> bool:
        """Whether the task's document is being converted in a worker right now."""
        future = self._futures.get(self._jobs[task].job_id)
        return future is not None and future.running()

    def _replace_broken_pool(self, exc: Exception) -> None:
        # A worker that died (killed, segfault) breaks the whole pool for good.
        if isinstance(exc, BrokenProcessPool) and not self._stopping.is_set():
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._pool_factory()

    async def _give_up(self, meta: SpoolMeta, exc: Exception) -> None:
        job_id = meta.job_id
        message = f"the conversion crashed {CRASH_ATTEMPTS} times: {type(exc).__name__}: {exc}"
        log.error("job %s fails: %s", job_id, message)
        try:
            await asyncio.to_thread(
                self._store.mark_failed, job_id, "conversion_crashed", message, _now()
            )
            await asyncio.to_thread(spool.remove, self._settings.spool_dir, job_id)
        except Exception:
            log.exception("job %s: cannot record the failure; it stays spooled", job_id)

    async def _announce(self, meta: SpoolMeta) -> None:
        """Publish ``job.accepted``: an event for outside consumers, no geobus queue needs it."""
        # Not mandatory (see Topology.binds): no geobus queue needs to hear it.
        await self._publisher.publish(
            jobs_exchange(self._settings.prefix),
            routing.JOB_ACCEPTED,
            accepted_message(meta).SerializeToString(),
            message_id=wire.message_id(meta.job_id, routing.JOB_ACCEPTED, 0),
            correlation_id=meta.job_id,
            stage=STAGE,
        )

    async def aclose(self) -> None:
        """Give conversions in flight ``shutdown_timeout`` s; stop the rest (they stay spooled)."""
        self._stopping.set()
        # Jobs waiting for a worker or for a retry do not hold up the exit.
        for task in [t for t in self._jobs if not self._converting(t)]:
            task.cancel()
        timeout = self._settings.shutdown_timeout
        converting = list(self._jobs)
        if converting:
            log.info("waiting up to %g s for %d conversion(s) in flight", timeout, len(converting))
            await asyncio.wait(converting, timeout=timeout)
        left = list(self._jobs)
        for task in left:
            task.cancel()
        if left:
            # A conversion still running in a worker would go on publishing:
            # stop the workers rather than wait for them.
            _kill_workers(self._pool)
            await asyncio.wait(left)
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)


def _kill_workers(pool: Executor) -> None:
    # ProcessPoolExecutor has no public way to stop a running call before
    # Python 3.14 (terminate_workers); its process table is the only handle.
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(Exception):
            process.kill()


def _now() -> datetime:
    return datetime.now(UTC)
