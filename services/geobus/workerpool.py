"""Worker processes that contain what GEOS and PROJ can do to a process.

A pathological geometry can segfault GEOS, exhaust memory or keep it busy
for minutes. The stages therefore run their CPU work in child processes of
their own (:class:`WorkerPool`), one request at a time per child, so that a
crash or a hang is pinned on the request that caused it:

- the child dies (segfault, ``os._exit``, the OOM killer) → the request
  fails with :class:`WorkerCrashError`;
- the request outlives its time limit → the child is killed, the request
  fails with :class:`WorkerTimeoutError`;
- the handler raises → :class:`HandlerError`, or the same geobus error
  class (a broken message stays a broken message).

Either way the pool replaces the child and carries on. This is a small pool
of our own rather than ``ProcessPoolExecutor``: there, one dead child breaks
the whole pool and fails every request in flight (so the culprit is
unknown), and a hung task cannot be stopped at all.

Children start from a fork server (a clean process that imported the heavy
modules once), never by forking the stage's own process, whose event loop
and threads do not survive a fork. They ignore SIGINT and SIGTERM: the
stage owns shutdown, and a Ctrl-C for the whole process group must not
look like a crash of the batch in flight.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from geobus.errors import (
    ConfigurationError,
    GeobusError,
    MessageError,
    PermanentError,
    TransientError,
)

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Any]
"""What a child does with one request (bytes in, a picklable reply out)."""

# How long a new child may take to import and build its handler.
START_TIMEOUT = 60.0
# Between attempts to start a replacement child that failed to start.
RESPAWN_DELAY = 1.0
_STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Worker processes run batch work at a lower CPU priority than the event
# loops that hand it to them: on a machine with fewer cores than busy
# processes, the ingress answering a small POST (or a stage confirming a
# publish) then waits for a core for far less time, and the batch work loses
# nothing when the loops are idle, which is most of the time. Measured on a
# shared 2-core machine during a 200 MB job (these and the conversion worker
# at 10, two runs each): small-POST p99 79 and 110 ms at 0, 55 and 57 ms at
# 10; GET /healthz p99 36 and 66 ms, 15 and 33 ms.
WORKER_NICENESS = 10

_ERROR_KINDS: dict[str, type[GeobusError]] = {
    "message": MessageError,
    "permanent": PermanentError,
    "transient": TransientError,
    "configuration": ConfigurationError,
}


class WorkerCrashError(Exception):
    """The child process died while working on the request."""

    self_describing = True

    def __init__(self, name: str, exitcode: int | None) -> None:
        self.exitcode = exitcode
        super().__init__(f"the {name}'s worker process crashed ({describe_exit(exitcode)})")


class WorkerTimeoutError(Exception):
    """The request outlived its time limit; the child was killed."""

    self_describing = True

    def __init__(self, name: str, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the {name}'s worker process did not finish within {seconds:g} s")


class HandlerError(Exception):
    """The handler raised an exception that is not a geobus error (a bug or bad input)."""

    self_describing = True

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(f"{type_name}: {message}" if message else type_name)


def describe_exit(exitcode: int | None) -> str:
    """``-11`` → ``killed by SIGSEGV``; ``1`` → ``exit code 1``."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _error_kind(exc: BaseException) -> str:
    for kind, cls in _ERROR_KINDS.items():
        if isinstance(exc, cls):
            return kind
    return "other"


def _serve(conn: Connection, factory: Callable[[], Handler], niceness: int = 0) -> None:
    """The child's main loop: build the handler, then answer requests until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    lower_priority(niceness)
    try:
        handler = factory()
    except Exception as exc:
        conn.send(("error", _error_kind(exc), type(exc).__name__, str(exc)))
        return
    conn.send(("ready",))
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the pool closed the pipe (or its process died): stop
        reply: tuple[Any, ...]
        try:
            reply = ("ok", handler(request))
        except Exception as exc:  # reported to the pool, which decides
            reply = ("raised", _error_kind(exc), type(exc).__name__, str(exc))
        try:
            conn.send(reply)
        except OSError:
            return  # the stage is gone (killed): nobody wants the answer


def lower_priority(niceness: int) -> None:
    """Add ``niceness`` to this process's nice value (a no-op where that is refused)."""
    if niceness > 0:
        with contextlib.suppress(OSError, AttributeError):
            os.nice(niceness)


def _die_with_parent() -> None:
    """Have the kernel kill this child when its parent (the fork server) dies.

    The fork server exits with the stage, so a worker busy in GEOS when the
    stage is killed -9 does not run on, orphaned, for minutes. Linux only;
    elsewhere the worker ends when it next reads its closed pipe.
    """
    if sys.platform != "linux":  # pragma: no cover
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(slots=True, eq=False)  # compared and hashed by identity, kept in a set
class _Worker:
    process: BaseProcess
    conn: Connection


def _context(preload: Sequence[str]) -> Any:
    if sys.platform != "linux":  # pragma: no cover - geobus runs on Linux
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Effective only before the fork server starts (once per process).
    context.set_forkserver_preload(list(preload))
    return context


class WorkerPool:
    """``size`` child processes, each answering one request at a time with ``factory()``.

    ``factory`` must be picklable (a module-level function or a
    ``functools.partial`` of one): it is called once in every child.
    Children run ``niceness`` steps below the stage's CPU priority.
    """

    def __init__(
        self,
        factory: Callable[[], Handler],
        size: int,
        *,
        name: str,
        preload: Sequence[str] = (),
        niceness: int = WORKER_NICENESS,
    ) -> None:
        if size < 1:
            msg = f"a worker pool needs at least one process, not {size}"
            raise ConfigurationError(msg)
        self.name = name
        self.size = size
        self._factory = factory
        self._niceness = niceness
        self._context = _context(preload)
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: set[_Worker] = set()
        self._respawning: set[asyncio.Task[None]] = set()
        self._closed = False
        _pools.add(self)

    async def start(self) -> None:
        """Start every child; raise ConfigurationError if a child cannot build its handler."""
        workers = await asyncio.gather(
            *(asyncio.to_thread(self._spawn) for _ in range(self.size)), return_exceptions=True
        )
        for worker in workers:
            if isinstance(worker, _Worker):
                self._idle.put_nowait(worker)
        errors = [w for w in workers if isinstance(w, BaseException)]
        if errors:
            await self.close()
            raise errors[0]

    def _spawn(self) -> _Worker:
        """Start one child and wait until its handler is built (blocking: run in a thread)."""
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_serve,
            args=(child, self._factory, self._niceness),
            name=f"{self.name}-worker",
            daemon=True,
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.add(worker)
        try:
            if not parent.poll(START_TIMEOUT):
                msg = f"the {self.name}'s worker process did not start within {START_TIMEOUT} s"
                raise TransientError(msg)
            status = parent.recv()
        except (EOFError, OSError) as exc:
            process.join(_STOP_TIMEOUT)
            msg = (
                f"the {self.name}'s worker process died while starting"
                f" ({describe_exit(process.exitcode)})"
            )
            self._discard(worker)
            raise TransientError(msg) from exc
        except TransientError:
            self._discard(worker)
            raise
        if status[0] != "ready":
            self._discard(worker)
            _, _, type_name, message = status
            msg = f"the {self.name}'s worker process cannot start: {type_name}: {message}"
            raise ConfigurationError(msg)
        return worker

    def _discard(self, worker: _Worker) -> None:
        """Kill a child (if alive) and forget it (blocking)."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(_STOP_TIMEOUT)
        worker.conn.close()
        worker.process.close()
        self._workers.discard(worker)

    async def run(self, request: bytes, time_limit: float) -> Any:
        """The reply of a child to ``request``; the time limit counts from when a child took it.

        Raises WorkerCrashError, WorkerTimeoutError, HandlerError, or the geobus
        error the handler raised. Cancelling kills the child working on it.
        """
        for _ in range(2):
            worker = await self._idle.get()
            exchange = asyncio.ensure_future(
                asyncio.to_thread(_exchange, worker, request, time_limit)
            )
            try:
                outcome = await asyncio.shield(exchange)
            except asyncio.CancelledError:
                # The thread still waits on the child: killing the child ends it.
                worker.process.kill()
                self._replace(worker, exchange)
                raise
            if outcome[0] in ("ok", "raised"):
                self._idle.put_nowait(worker)
                break
            self._replace(worker, exchange)
            if outcome[0] != "gone":
                break
            # The child had died before it got the request (not this
            # request's fault): once more, with another child.
        else:
            raise WorkerCrashError(self.name, outcome[1])
        return _reply(self.name, outcome, time_limit)

    def _replace(self, worker: _Worker, exchange: asyncio.Future[tuple[Any, ...]]) -> None:
        if self._closed:
            return
        task = asyncio.create_task(self._respawn(worker, exchange))
        # Keep a reference until done: the loop only holds weak ones.
        self._respawning.add(task)
        task.add_done_callback(self._respawning.discard)

    async def _respawn(self, dead: _Worker, exchange: asyncio.Future[tuple[Any, ...]]) -> None:
        with contextlib.suppress(Exception):
            await exchange
        await asyncio.to_thread(self._discard, dead)
        while not self._closed:
            try:
                worker = await asyncio.to_thread(self._spawn)
            except GeobusError as exc:
                log.error("%s: cannot start a worker process (%s); trying again", self.name, exc)
                await asyncio.sleep(RESPAWN_DELAY)
                continue
            if self._closed:
                await asyncio.to_thread(self._discard, worker)
            else:
                self._idle.put_nowait(worker)
            return

    def kill_all(self) -> None:
        """Kill every child at once (at interpreter exit, when close() was not awaited)."""
        for worker in list(self._workers):
            with contextlib.suppress(ValueError, OSError):
                worker.process.kill()

    async def close(self) -> None:
        """Stop every child: idle ones by closing their pipe, others by killing them."""
        self._closed = True
        # Not cancelled: a child being started in a thread would be left
        # behind; the task sees _closed and stops it.
        await asyncio.gather(*self._respawning, return_exceptions=True)
        idle = []
        while not self._idle.empty():
            idle.append(self._idle.get_nowait())
        for worker in idle:
            worker.conn.close()  # the child reads EOF and returns

        def stop_all() -> None:
            for worker in idle:
                worker.process.join(_STOP_TIMEOUT)
            for worker in list(self._workers):
                with contextlib.suppress(ValueError, OSError):
                    self._discard(worker)

        await asyncio.to_thread(stop_all)


# Children ignore SIGTERM, which multiprocessing's own exit handler relies
# on: kill what is left before it runs (atexit runs handlers last-in first).
_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for pool in list(_pools):
        pool.kill_all()


def _exchange(worker: _Worker, request: bytes, time_limit: float) -> tuple[Any, ...]:
    """Send ``request`` to one child and wait for its answer (blocking: run in a thread).

    Returns the child's reply tuple, ``("crashed", exitcode)``,
    ``("timeout",)`` or ``("gone", exitcode)``; never raises for what the
    child does.
    """
    try:
        worker.conn.send_bytes(request)
    except OSError:
        worker.process.join(_STOP_TIMEOUT)
        return ("gone", worker.process.exitcode)
    try:
        ready = worker.conn.poll(time_limit)
        if ready:
            reply: tuple[Any, ...] = worker.conn.recv()
            return reply
    except (EOFError, OSError):
        worker.process.join(_STOP_TIMEOUT)
        return ("crashed", worker.process.exitcode)
    worker.process.kill()
    worker.process.join(_STOP_TIMEOUT)
    return ("timeout",)


def _reply(name: str, outcome: tuple[Any, ...], time_limit: float) -> Any:
    status = outcome[0]
    if status == "ok":
        return outcome[1]
    if status == "raised":
        _, kind, type_name, message = outcome
        if kind in _ERROR_KINDS:
            raise _ERROR_KINDS[kind](message)
        raise HandlerError(type_name, message)
    if status == "timeout":
        raise WorkerTimeoutError(name, time_limit)
    raise WorkerCrashError(name, outcome[1])
