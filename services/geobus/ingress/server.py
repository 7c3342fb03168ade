"""Run the ingress with uvicorn (what ``geobus ingress`` calls)."""

from __future__ import annotations

import importlib.util
import logging
import signal
from types import FrameType

import uvicorn

from geobus.ingress.app import create_app
from geobus.settings import Settings


def http_implementation() -> str:
    """``httptools`` when installed (faster parser), else the pure-Python ``h11``."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def config(
    settings: Settings, *, access_log: bool = False, log_level: str = "info"
) -> uvicorn.Config:
    """The uvicorn configuration of the ingress application."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        http=http_implementation(),
        lifespan="on",
        access_log=access_log,
        log_level=log_level,
        # Clients streaming a large body must not be cut off between chunks.
        timeout_keep_alive=30,
    )


def serve(settings: Settings, *, access_log: bool = False, log_level: str = "info") -> None:
    """Serve the ingress until interrupted (SIGINT / SIGTERM end it gracefully)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown, then raises the
    # signal again for the handler that was installed before it. With the
    # default handler the process would die by that signal after a clean
    # stop; a no-op handler lets a clean stop exit with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _already_handled)
    uvicorn.Server(config(settings, access_log=access_log, log_level=log_level)).run()


def _already_handled(signum: int, frame: FrameType | None) -> None:
    """The signal was handled by uvicorn's graceful shutdown."""
