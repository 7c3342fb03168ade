"""``geobus up``: the whole pipeline on this machine as supervised processes.

Each service runs as its own ``geobus`` process — the very commands a
container would run — so a crash in one (GEOS can take a process down) does
not take the others with it. A child that exits unexpectedly is restarted
with backoff; SIGINT/SIGTERM stop every child with SIGTERM (they finish their
in-flight batches) and wait for them. One line is printed per finished job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import aio_pika

from geobus.broker import routing
from geobus.broker.topology import declare_from_settings
from geobus.broker.wire import decode
from geobus.settings import Settings, redact
from geobus.v1 import job_pb2

RESTART_WINDOW_S = 60.0
MAX_RESTARTS = 5
STOP_GRACE_S = 30.0


@dataclass
class Child:
    """One supervised service process."""

    name: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    starts: list[float] = field(default_factory=list)


def commands(replicas: int) -> list[Child]:
    """The processes of the pipeline: the ingress and ``replicas`` of each stage."""
    geobus = [sys.executable, "-m", "geobus.cli"]
    children = [Child("ingress", [*geobus, "ingress"])]
    for stage in ("validator", "reprojector", "writer"):
        for n in range(replicas):
            children.append(Child(f"{stage}-{n + 1}", [*geobus, "worker", stage]))
    return children


async def _keep_running(child: Child, stop: asyncio.Event) -> None:
    while not stop.is_set():
        now = time.monotonic()
        child.starts = [t for t in child.starts if now - t < RESTART_WINDOW_S] + [now]
        if len(child.starts) > MAX_RESTARTS:
            print(f"geobus up: {child.name} keeps failing; stopping", file=sys.stderr)
            stop.set()
            return
        child.process = await asyncio.create_subprocess_exec(*child.argv, env=os.environ.copy())
        waiter = asyncio.create_task(child.process.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if stop.is_set():
            await _terminate(child)
            return
        code = waiter.result()
        print(f"geobus up: {child.name} exited with {code}; restarting", file=sys.stderr)
        await asyncio.sleep(min(2 ** len(child.starts), 30))


async def _terminate(child: Child) -> None:
    process = child.process
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_S)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _report_jobs(settings: Settings, stop: asyncio.Event) -> None:
    """Print one line per job as it completes or fails."""
    topology = await declare_from_settings(settings)
    connection = await aio_pika.connect_robust(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in (routing.JOB_COMPLETED, routing.JOB_FAILED):
            await queue.bind(topology.jobs_exchange, key)
        async with queue.iterator() as messages:
            stopper = asyncio.create_task(stop.wait())
            while not stop.is_set():
                getter = asyncio.create_task(anext(messages))
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                message = getter.result()
                async with message.process():
                    print(_job_line(decode(message.body, message.type)), flush=True)


def _job_line(event: object) -> str:
    if isinstance(event, job_pb2.JobCompleted):
        c = event.counts
        status = job_pb2.JobStatus.Name(event.status).removeprefix("JOB_STATUS_").lower()
        return (
            f"job {event.job_id} {status}: {c.received} received, {c.stored} stored "
            f"({c.repaired} repaired), {c.rejected} rejected"
        )
    if isinstance(event, job_pb2.JobFailed):
        return f"job {event.job_id} failed: {event.code}: {event.message}"
    return f"job event {type(event).__name__}"


async def run(settings: Settings, replicas: int = 1) -> int:
    """Run the pipeline until SIGINT/SIGTERM; 0 after a clean stop, 1 if a child kept failing."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Declared once before the children start, so that none of them races
    # another to create the queues.
    await declare_from_settings(settings)
    children = commands(replicas)
    tasks = [asyncio.create_task(_keep_running(child, stop)) for child in children]
    reporter = asyncio.create_task(_report_jobs(settings, stop))
    print(
        f"geobus up: ingress on http://{settings.http_host}:{settings.http_port}, "
        f"{replicas} replica(s) per stage, store {redact(settings.database_url)}",
        flush=True,
    )
    await stop.wait()
    await asyncio.gather(*tasks)
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reporter
    failed = any(len(c.starts) > MAX_RESTARTS for c in children)
    return 1 if failed else 0
