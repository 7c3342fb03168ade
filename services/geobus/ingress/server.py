"""Run the ingress with uvicorn (what ``geobus ingress`` calls).

SIGTERM (or SIGINT) first *drains*: new documents are answered 503 with
``Retry-After`` and ``/readyz`` turns 503, for ``GEOBUS_SHUTDOWN_DRAIN``
seconds while the server still listens (time for a load balancer to stop
sending). Then uvicorn stops listening and finishes the requests in flight,
and the lifespan gives the conversions in flight ``GEOBUS_SHUTDOWN_TIMEOUT``
seconds before it stops them (they stay spooled and are resumed at the next
start), closes the publisher and exits 0. A second SIGINT forces the exit.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn

from geobus import logs, scheduling
from geobus.ingress.admission import Drain
from geobus.ingress.app import create_app
from geobus.ingress.redaction import AccessLogFilter
from geobus.ingress.webhooks import check_exposure
from geobus.settings import Settings

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while the event loop waits for it."""
LOOP_SLICE = 0.0001
"""The event loop thread's CPU time slice in seconds (the shortest Linux grants)."""


def http_implementation() -> str:
    """``httptools`` when installed (faster parser), else the pure-Python ``h11``."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def config(
    settings: Settings,
    *,
    access_log: bool = False,
    log_level: str = "info",
    drain: Drain | None = None,
) -> uvicorn.Config:
    """The uvicorn configuration of the ingress application."""
    return uvicorn.Config(
        create_app(settings, drain=drain),
        host=settings.http_host,
        port=settings.http_port,
        http=http_implementation(),
        lifespan="on",
        access_log=access_log,
        log_level=log_level,
        # geobus.logs configured the root logger: uvicorn's lines go through it.
        log_config=None,
        # Clients streaming a large body must not be cut off between chunks.
        timeout_keep_alive=30,
    )


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains for ``drain_seconds`` before its graceful shutdown."""

    def __init__(
        self, config: uvicorn.Config, drain: Drain, drain_seconds: float, rt_priority: int = 0
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_seconds = drain_seconds
        self.rt_priority = rt_priority
        self._drain_since: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start, then move what start-up made out of the cyclic garbage collector's sight."""
        await super().startup(sockets)
        # The modules, PROJ's and Starlette's objects and the open connections
        # live as long as the process. Left to the collector, each full
        # collection walked them all on the event loop: 15-20 ms (measured),
        # the longest stalls of the loop while a big job ran. Frozen, a full
        # collection walks only what requests made since.
        gc.collect()
        gc.freeze()
        # The threads that persist jobs (psycopg, JSON) hold the GIL in
        # stretches; by default the loop may wait 5 ms for it each time. At
        # 0.5 ms the small POSTs' p99 inside the ingress during a 200 MB job
        # fell from 99-192 to 45-75 ms (3 probe runs each, same sitting).
        sys.setswitchinterval(SWITCH_INTERVAL)
        # Woken (a request, a timer), the loop preempts batch work at once
        # instead of after its slice (geobus.scheduling). During a 200 MB job
        # (probe, 2 runs each): loop-lag p99 15.6-26.8 -> 7.7-8.6 ms, small
        # POSTs' p99 inside the ingress 186-199 -> 46-70 ms.
        if scheduling.request_slice(LOOP_SLICE) is None:
            log.info("no short CPU time slice for the event loop (it needs Linux 6.12+)")
        # Even so the loop still waited behind PostgreSQL and RabbitMQ (nice 0,
        # not ours) for a CPU: lag p99 7-10 ms. Real time (where permitted),
        # probe runs: 1.9-2.0 ms. Its other pools' threads stay ordinary ones.
        if self.rt_priority:
            if scheduling.request_realtime(self.rt_priority):
                # ... and so do the threads that make each job durable (intake).
                scheduling.lend_realtime(self.rt_priority)
                log.info(
                    "event loop and persisting threads run in real time (SCHED_RR %d)",
                    self.rt_priority,
                )
            else:
                log.warning(
                    "GEOBUS_INGRESS_RT_PRIORITY=%d refused (the ingress needs CAP_SYS_NICE);"
                    " the event loop keeps its ordinary priority",
                    self.rt_priority,
                )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: start draining (a plain flag: we are in a signal handler)."""
        if self._drain_since is None:
            self.drain.start()
            self._drain_since = time.monotonic()
            if self.drain_seconds > 0:
                return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """Stop listening once the drain time is over."""
        since = self._drain_since
        if (
            since is not None
            and not self.should_exit
            and time.monotonic() - since >= self.drain_seconds
        ):
            log.info("drained for %g s; shutting down", self.drain_seconds)
            self.should_exit = True
        return await super().on_tick(counter)


def serve(settings: Settings, *, access_log: bool = False, log_level: str = "info") -> None:
    """Serve the ingress until SIGINT / SIGTERM, then drain and stop gracefully."""
    logs.configure(settings.log_level, settings.log_format)
    # Unsigned and reachable from elsewhere: refuse (ConfigurationError) before listening.
    check_exposure(settings)
    # Query strings may hold a callback_url's credentials.
    logging.getLogger("uvicorn.access").addFilter(AccessLogFilter())
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown, then raises the
    # signal again for the handler that was installed before it. With the
    # default handler the process would die by that signal after a clean
    # stop; a no-op handler lets a clean stop exit with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _already_handled)
    drain = Drain()
    server = DrainingServer(
        config(settings, access_log=access_log, log_level=log_level, drain=drain),
        drain,
        settings.shutdown_drain,
        settings.ingress_rt_priority,
    )
    server.run()


def _already_handled(signum: int, frame: FrameType | None) -> None:
    """The signal was handled by uvicorn's graceful shutdown."""
