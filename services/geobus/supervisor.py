"""``geobus up``: the whole pipeline on this machine as supervised processes.

Each service runs as its own ``geobus`` process — the very commands a
container would run — so a crash in one (GEOS can take a process down) does
not take the others with it. A child that exits unexpectedly is restarted
with backoff; SIGINT/SIGTERM stop every child with SIGTERM (they finish their
in-flight batches) and wait for them. One line is printed per finished job.

Children get their settings, credentials included, through the environment
they inherit, never on their command line: ``/proc/<pid>/cmdline`` and
``ps`` are readable by every user of the machine, a process's environment
only by its owner. With ``--env-dir DIR`` each service's processes also get
the variables of ``DIR/<service>.env`` (as ``scripts/rabbitmq-users``
writes them: one least-privilege RabbitMQ user per service).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from geobus.broker import routing
from geobus.broker.topology import declare_from_settings, from_settings, observer_queue
from geobus.broker.wire import decode
from geobus.errors import ConfigurationError
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
    # Variables this child gets on top of the inherited environment.
    env: dict[str, str] = field(default_factory=dict)


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (values optionally in single or double quotes; ``#`` comments)."""
    variables = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not name.strip().isidentifier():
            # Not the line itself: it may hold a password.
            msg = f"{path}:{number}: expected NAME=value"
            raise ConfigurationError(msg)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        variables[name.strip()] = value
    return variables


def service_env(env_dir: Path | None, children: list[Child]) -> None:
    """Give each child the variables of ``env_dir/<service>.env``, where there is one."""
    if env_dir is None:
        return
    if not env_dir.is_dir():
        msg = f"--env-dir {env_dir}: no such directory"
        raise ConfigurationError(msg)
    for child in children:
        path = env_dir / f"{child.name.rsplit('-', 1)[0]}.env"
        if path.is_file():
            child.env = {**read_env_file(path), **child.env}


def commands(replicas: int, metrics_port: int = 0) -> list[Child]:
    """The processes of the pipeline: the ingress and ``replicas`` of each stage.

    With ``metrics_port`` set, the workers serve their metrics on
    ``metrics_port + 1``, ``+ 2``, … in this order (one port per process).
    """
    geobus = [sys.executable, "-m", "geobus.cli"]
    children = [Child("ingress", [*geobus, "ingress"])]
    for stage in ("validator", "reprojector", "writer"):
        for n in range(replicas):
            children.append(Child(f"{stage}-{n + 1}", [*geobus, "worker", stage]))
    if metrics_port:
        for offset, child in enumerate(children[1:], start=1):
            child.env["GEOBUS_METRICS_PORT"] = str(metrics_port + offset)
    return children


async def _keep_running(child: Child, stop: asyncio.Event) -> None:
    while not stop.is_set():
        now = time.monotonic()
        child.starts = [t for t in child.starts if now - t < RESTART_WINDOW_S] + [now]
        if len(child.starts) > MAX_RESTARTS:
            print(f"geobus up: {child.name} keeps failing; stopping", file=sys.stderr)
            stop.set()
            return
        environment = {**os.environ, **child.env}
        child.process = await asyncio.create_subprocess_exec(*child.argv, env=environment)
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
    # run() declared (or checked) the topology already.
    topology = from_settings(settings)
    connection = await aio_pika.connect_robust(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        # A name the observer's RabbitMQ user may use (geobus.broker.permissions).
        name = observer_queue(settings.prefix, f"up-{uuid.uuid4().hex[:12]}")
        queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
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


def _reporter_ended(task: asyncio.Task[None]) -> None:
    # The pipeline keeps running without job lines; say why they stopped
    # (e.g. ACCESS_REFUSED: this user may not bind a queue to job events).
    if not task.cancelled() and task.exception() is not None:
        print(f"geobus up: no more job lines: {task.exception()}", file=sys.stderr, flush=True)


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


async def run(settings: Settings, replicas: int = 1, env_dir: Path | None = None) -> int:
    """Run the pipeline until SIGINT/SIGTERM; 0 after a clean stop, 1 if a child kept failing.

    ``env_dir``: per-service variables (:func:`service_env`).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Declared once before the children start, so that none of them races
    # another to create the queues.
    await declare_from_settings(settings)
    children = commands(replicas, settings.metrics_port)
    service_env(env_dir, children)
    tasks = [asyncio.create_task(_keep_running(child, stop)) for child in children]
    reporter = asyncio.create_task(_report_jobs(settings, stop))
    reporter.add_done_callback(_reporter_ended)
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
