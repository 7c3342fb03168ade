"""The ingress's Starlette application: accept, spool, answer 202, convert later.

``POST /v1/features`` (:mod:`geobus.ingress.intake`) admits the document
(:mod:`geobus.ingress.admission`), streams it to the spool, fsyncs it with its
metadata, records the job and answers ``202 Accepted``; the conversion runs
afterwards in a worker process (:mod:`geobus.ingress.runner`). The job API
reads the store's ledger. Every error is an RFC 9457 problem document.

The lifespan opens the store, the publisher, the runner and the broker
monitor (:mod:`geobus.ingress.monitor`), resumes the jobs a crash left in the
spool (:mod:`geobus.ingress.resume`) before the first request, and at
shutdown gives conversions in flight their time, then closes everything.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geobus import background, metrics
from geobus.ingress import admin
from geobus.ingress.admission import Admission, BrokerPressure, Drain
from geobus.ingress.documents import rejects_document
from geobus.ingress.intake import post_features
from geobus.ingress.monitor import BrokerProbe, watch
from geobus.ingress.openapi import get_openapi
from geobus.ingress.ports import JobStore, Publisher, PublisherFactory
from geobus.ingress.problem import EXCEPTION_HANDLERS, problem
from geobus.ingress.resources import (
    InvalidParameterError,
    Resources,
    int_parameter,
    resources_of,
)
from geobus.ingress.resume import resume_spooled
from geobus.ingress.runner import ConversionRunner, PoolRunner, process_pool
from geobus.ingress.telemetry import Telemetry, metrics_endpoint
from geobus.jobs import job_document
from geobus.settings import Settings

log = logging.getLogger(__name__)

RunnerFactory = Callable[[Settings, JobStore, Publisher], ConversionRunner]
ProbeFactory = Callable[[Settings], Awaitable[BrokerProbe]]

REJECTS_PAGE = 100
REJECTS_PAGE_MAX = 1000
READY_TIMEOUT = 2.0


# -- job API -------------------------------------------------------------------


def _could_be_job(job_id: str) -> bool:
    """False for ids no job can have; PostgreSQL refuses to even compare NUL in text."""
    return "\x00" not in job_id


async def get_job(request: Request) -> Response:
    """The job's status document."""
    job_id = request.path_params["job_id"]
    job = None
    if _could_be_job(job_id):
        job = await asyncio.to_thread(resources_of(request).store.get_job, job_id)
    if job is None:
        return problem(404, f"no job {job_id!r}", instance=request.url.path, code="unknown-job")
    return JSONResponse(job_document(job))


async def get_rejects(request: Request) -> Response:
    """One page of the job's rejected features."""
    store = resources_of(request).store
    job_id = request.path_params["job_id"]
    try:
        limit = int_parameter(request, "limit", REJECTS_PAGE, 1, REJECTS_PAGE_MAX)
        offset = int_parameter(request, "offset", 0, 0, 2**62)
    except InvalidParameterError as exc:
        return problem(
            422, exc.detail, instance=request.url.path, code=exc.code, parameter=exc.parameter
        )
    job = await asyncio.to_thread(store.get_job, job_id) if _could_be_job(job_id) else None
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
    """Ready: not shutting down, the broker connection is open and the store answers."""
    resources = resources_of(request)
    if resources.admission.draining:
        return problem(
            503, "the ingress is shutting down", instance=request.url.path, code="not-ready"
        )
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
    pools = functools.partial(process_pool, 1, settings.batch_niceness)
    runner = PoolRunner(settings, store, publisher, pools)
    runner.warm_up()
    return runner


async def _default_publisher(settings: Settings) -> Publisher:
    from geobus.ingress.wiring import connect_publisher

    return await connect_publisher(settings)


async def amqp_probe(settings: Settings) -> BrokerProbe:
    """The default broker probe: two connections of its own to ``settings.amqp_url``."""
    from geobus.ingress.wiring import connect_probe

    return await connect_probe(settings)


def create_app(
    settings: Settings,
    *,
    store: JobStore | None = None,
    publisher: Publisher | None = None,
    publisher_factory: PublisherFactory | None = None,
    runner_factory: RunnerFactory = pool_runner,
    probe_factory: ProbeFactory | None = None,
    pressure: BrokerPressure | None = None,
    drain: Drain | None = None,
    deadletters: admin.DeadLetters | None = None,
) -> Starlette:
    """The ingress application. Nothing is opened until its lifespan starts.

    A ``store`` or ``publisher`` passed in belongs to the caller; those the
    lifespan opens itself (from ``settings``, or ``publisher_factory``) it
    also closes. The broker is watched through ``probe_factory``'s probe; by
    default through its own AMQP connections, unless a ``publisher`` or
    ``publisher_factory`` is given (tests with fakes): then nobody updates
    ``pressure`` but the caller. ``drain`` is set by the server on SIGTERM.
    ``deadletters`` replaces the broker's dead letters behind the admin
    endpoints (:mod:`geobus.ingress.admin`) for tests.
    """
    broker_pressure = pressure or BrokerPressure()
    draining = drain or Drain()
    # Opens a connection per admin request only: nothing to close at shutdown.
    dead_letters = deadletters or admin.BrokerDeadLetters(settings)
    if probe_factory is None and publisher is None and publisher_factory is None:
        probe_factory = amqp_probe

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
            admission = Admission(settings, runner.pending, broker_pressure, draining)
            if probe_factory is not None:
                probe = await probe_factory(settings)
                stack.push_async_callback(probe.close)  # after the monitor stopped
                await stack.enter_async_context(
                    background.running(watch(probe, broker_pressure), "broker monitor")
                )
            await resume_spooled(settings.spool_dir, job_store, runner)
            # Samples the loop's lag for /metrics (geobus_event_loop_lag_seconds).
            await stack.enter_async_context(metrics.loop_lag_probe())
            yield {
                "resources": Resources(settings, job_store, broker, runner, admission),
                "deadletters": dead_letters,
            }

    routes = [
        Route("/v1/features", post_features, methods=["POST"]),
        Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/jobs/{job_id}/rejects", get_rejects, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", get_openapi, methods=["GET"]),
        *admin.ROUTES,
    ]
    return Starlette(
        routes=routes,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
        # Counts, times and traces every request (geobus.ingress.telemetry).
        middleware=[Middleware(Telemetry)],
    )
